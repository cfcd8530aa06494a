# Two commands on a fresh machine (see README):  make demo  |  make test
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch lies on this project's machines' disk; on a GPU machine use e.g.
#   make TORCH=torch demo        (any build that satisfies pyproject's torch>=2.4)
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.specnb-installed

.PHONY: setup demo test bench clean lock test-latest

setup: $(STAMP)

# Installs the exact versions of requirements.lock (what the suite last passed with); pyproject.toml
# keeps ranges for people who install specnb into an environment of their own.
$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/specnb grid params/default.yaml

test: $(STAMP)
	$(BIN)/python -m pytest --nbval-lax tests notebooks

bench: $(STAMP)
	$(BIN)/specnb bench

# The suite on the newest versions pyproject allows, in a venv of its own (.venv-latest): what the
# next upstream release would break. Green? `make lock` writes those versions to requirements.lock.
LATEST := .venv-latest
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q "$(TORCH)"
	$(LATEST)/bin/python -m pip install -q --upgrade -e '.[dev]'
	$(LATEST)/bin/python -m pip freeze --exclude-editable | grep -v '^torch==' > $(LATEST)/versions.txt
	diff <(grep -v '^#' requirements.lock) $(LATEST)/versions.txt || true
	$(LATEST)/bin/python -m pytest --nbval-lax tests notebooks

lock:
	test -f $(LATEST)/versions.txt || { echo "run make test-latest first (it installs the newest versions and tests them)"; exit 1; }
	{ sed -n '/^#/p' requirements.lock; cat $(LATEST)/versions.txt; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) $(LATEST) .pytest_cache
