"""Prompt sets: the built-in ``builtin:code`` set and a loader for Spec-Bench style JSONL.

``builtin:code`` was written for this project to suit the embedded pair, a small code
completion pair trained on the Python standard library: function signatures, class headers
and docstrings to continue, in the standard library's own style. A JSONL file holds one JSON
object per line, ``{"question_id": ..., "category": ..., "turns": ["first turn", ...]}``
(Spec-Bench, MT-Bench); a prompt's text is its first turn, and all its turns are kept in
``turns`` (MT-Bench's questions have two: the second asks about the model's own first answer, so
it can only be run after it; :mod:`specnb.chat` renders the conversation turn by turn). A limit
on the number of prompts spreads over the categories (:func:`load_prompts`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class Prompt:
    """One prompt: a stable id, the text to continue, a category for grouping, and every turn.

    ``text`` is the first turn (what single-turn callers read); ``turns`` defaults to
    ``(text,)``, so ``Prompt(id, text, category)`` stays a one-turn prompt.
    """

    id: str
    text: str
    category: str
    turns: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.turns:
            object.__setattr__(self, "turns", (self.text,))
        elif self.turns[0] != self.text:
            raise ValueError(f"prompt {self.id!r}: text must be the first turn; build it as "
                             "Prompt(id, turns[0], category, tuple(turns))")


_CODE: list[tuple[str, str]] = [
    ("signature", 'def read_config(path, encoding="utf-8"):\n    """Read a configuration file'
                  ' and return a dictionary of its sections.\n\n'),
    ("signature", "def _split_words(text, sep=None, maxsplit=-1):\n"),
    ("signature", "def is_valid_identifier(name):\n    \"\"\"Return True if name is a valid"
                  " Python identifier.\"\"\"\n    if not name:\n"),
    ("signature", "def copy_file(src, dst, *, follow_symlinks=True):\n    \"\"\"Copy data"
                  " from src to dst.\n\n    If follow_symlinks is false and src is a symbolic"
                  " link,\n"),
    ("signature", "def get_terminal_size(fallback=(80, 24)):\n    \"\"\"Get the size of the"
                  " terminal window.\n\n"),
    ("class", "class Queue:\n    \"\"\"Create a queue object with a given maximum size.\n\n"
              "    If maxsize is <= 0, the queue size is infinite.\n    \"\"\"\n\n"
              "    def __init__(self, maxsize=0):\n"),
    ("class", "class ParseError(Exception):\n    \"\"\"Raised when the input cannot be parsed."
              "\"\"\"\n\n    def __init__(self, msg, lineno=None):\n"),
    ("class", "class Counter(dict):\n    \"\"\"Dict subclass for counting hashable items.\"\"\"\n"
              "\n    def __init__(self, iterable=None, /, **kwds):\n"),
    ("class", "class _Stream:\n    \"\"\"A file-like object that reads from a buffer.\"\"\"\n"
              "\n    def read(self, size=-1):\n"),
    ("method", "    def __repr__(self):\n        return '%s(%r)' % ("),
    ("method", "    def close(self):\n        \"\"\"Close the file and release its resources."
               "\"\"\"\n        if self._closed:\n"),
    ("docstring", '"""Utilities for working with paths.\n\nThis module provides functions to'
                  " split, join and normalize\n"),
    ("docstring", "def parse_date(value):\n    \"\"\"Parse a date string of the form"
                  " YYYY-MM-DD.\n\n    Raise ValueError if"),
    ("body", "import os\nimport sys\n\n\ndef main(argv=None):\n    if argv is None:\n"
             "        argv = sys.argv[1:]\n"),
    ("body", "    for key, value in sorted(mapping.items()):\n        if value is None:\n"),
    ("body", "    try:\n        fd = os.open(filename, os.O_RDONLY)\n    except OSError as e:\n"),
]

BUILTIN: dict[str, list[Prompt]] = {
    "code": [Prompt(f"code-{i:02d}", text, category) for i, (category, text) in enumerate(_CODE)],
}


def load_prompts(source: str, limit: int | None = None) -> list[Prompt]:
    """Prompts from ``builtin:NAME`` or a Spec-Bench style JSONL file; ``limit`` of them, spread over categories.

    A limit takes one prompt of each category in turn (in the order the categories first appear),
    each category's prompts in file order, until ``limit`` are taken; they come back in file order.
    Why not simply the first ``limit``: prompt files are sorted by category (Spec-Bench's first 80
    questions are all MT-bench), so "48 prompts" would measure one task and the per-category tables
    would have one row. Every limit's prompts are the next smaller limit's plus one, so a short
    analysis (the drift on 3 prompts) reads prompts its run also decoded.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of prompts or None, got {limit}")
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX):]
        if name not in BUILTIN:
            known = ", ".join(BUILTIN_PREFIX + n for n in sorted(BUILTIN))
            raise ValueError(f"unknown prompt set {source!r}; built-in sets: {known}, "
                             "or pass the path of a Spec-Bench style JSONL file")
        prompts = list(BUILTIN[name])
    else:
        prompts = _read_jsonl(Path(source))
    return prompts if limit is None else spread(prompts, limit)


# Spec-Bench reports MT-bench's eight categories as one task, "multi-turn conversation" (its speed.py)
MT_BENCH = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
SPEC_BENCH_TASKS = dict.fromkeys(MT_BENCH, "mt_bench")


def task(category: str) -> str:
    """The task a category is reported under: Spec-Bench's (MT-bench's categories are ``mt_bench``), else itself."""
    return SPEC_BENCH_TASKS.get(category, category)


def _round_robin(groups: list[list[int]]) -> list[int]:
    """The first of every group, then the second of every group, ..."""
    out: list[int] = []
    for depth in range(max(map(len, groups), default=0)):
        out += [g[depth] for g in groups if depth < len(g)]
    return out


def _grouped(items: list[int], key) -> list[list[int]]:
    """``items`` grouped by ``key(item)``, groups in order of first appearance, items in order."""
    groups: dict[str, list[int]] = {}
    for i in items:
        groups.setdefault(key(i), []).append(i)
    return list(groups.values())


def spread(prompts: list[Prompt], limit: int) -> list[Prompt]:
    """``limit`` prompts taken round-robin over the tasks, and within a task over its categories (MT-bench's
    eight), each category in file order; returned in file order."""
    tasks = _grouped(list(range(len(prompts))), lambda i: task(prompts[i].category))
    order = _round_robin([_round_robin(_grouped(t, lambda i: prompts[i].category)) for t in tasks])
    return [prompts[i] for i in sorted(order[:limit])]


def _read_jsonl(path: Path) -> list[Prompt]:
    """Parse a Spec-Bench style JSONL file; errors name the file and line."""
    if not path.is_file():
        raise ValueError(f"prompt file {str(path)!r} not found; pass builtin:code or the path"
                         " of a Spec-Bench style JSONL file")
    prompts = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            turns = row["turns"]
            if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
                raise TypeError("'turns' must be a non-empty list of strings")
            prompts.append(Prompt(str(row["question_id"]), turns[0],
                                  str(row.get("category", "unknown")), tuple(turns)))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}:{lineno}: not a Spec-Bench prompt ({err!r}); each line"
                             ' must be {"question_id": ..., "category": ..., "turns": [...]}'
                             ) from None
    if not prompts:
        raise ValueError(f"{path}: no prompts in the file")
    return prompts
