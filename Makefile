# Two commands on a fresh machine (see README):  make demo  |  make test
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch lies on this project's machines' disk; on a GPU machine use e.g.
#   make TORCH=torch demo        (any build that satisfies pyproject's torch>=2.4)
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.specnb-installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/specnb grid params/default.yaml

test: $(STAMP)
	$(BIN)/python -m pytest --nbval-lax tests notebooks

bench: $(STAMP)
	$(BIN)/specnb bench

clean:
	rm -rf $(VENV) .pytest_cache
