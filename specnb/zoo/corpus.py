"""The zoo's training corpus: text every machine with Python has, read at build time.

Two sources, never copied into the repository:

* the standard library's own ``.py`` sources (code, docstrings, comments), minus its test
  suites, the generated codec tables of ``encodings/`` and ``pydoc_data`` itself;
* ``pydoc_data.topics``: the reference manual's prose, one document per topic.

Documents are deduplicated by content and split into train / validation by a hash of their
name, so the split is the same on every machine with the same Python, whatever the order
the files are listed in.
"""

from __future__ import annotations

import hashlib
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# Parts of the standard library that are not representative library code.
_SKIP_DIRS = frozenset({"test", "tests", "idle_test", "encodings", "site-packages",
                        "dist-packages", "pydoc_data", "__pycache__"})
VAL_EVERY = 25  # about 1 document in VAL_EVERY goes to validation


@dataclass(frozen=True)
class Document:
    """One corpus document: a stdlib module or one manual topic."""

    name: str
    text: str


@dataclass(frozen=True)
class Corpus:
    """Deduplicated documents, split into train and validation."""

    train: list[Document]
    val: list[Document]

    def stats(self) -> dict[str, object]:
        """Counts recorded in the manifest (documents and characters per split)."""
        return {
            "python": sys.version.split()[0],
            "train_documents": len(self.train),
            "val_documents": len(self.val),
            "train_chars": sum(len(d.text) for d in self.train),
            "val_chars": sum(len(d.text) for d in self.val),
        }


def stdlib_documents(root: Path | None = None) -> list[Document]:
    """The standard library's ``.py`` files under ``root`` (default: this interpreter's)."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _SKIP_DIRS.intersection(rel.parts[:-1]):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            docs.append(Document(f"stdlib/{rel.as_posix()}", text))
    return docs


def manual_documents() -> list[Document]:
    """The reference manual's topics from ``pydoc_data.topics``."""
    from pydoc_data.topics import topics

    return [Document(f"manual/{key}", text) for key, text in sorted(topics.items())]


def _is_val(name: str) -> bool:
    """Deterministic split: by the first bytes of the name's sha256."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % VAL_EVERY == 0


def load_corpus(max_chars: int | None = None) -> Corpus:
    """Read, deduplicate and split the corpus; ``max_chars`` caps it for quick builds.

    With a cap, every k-th document is kept (train capped to ``max_chars``, validation to a
    tenth of it), so a small corpus still mixes code and prose.
    """
    docs = stdlib_documents() + manual_documents()
    seen: set[str] = set()
    unique = []
    for doc in docs:
        digest = hashlib.sha256(doc.text.encode()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            unique.append(doc)
    train = [d for d in unique if not _is_val(d.name)]
    val = [d for d in unique if _is_val(d.name)]
    if max_chars is not None:
        train, val = _thin(train, max_chars), _thin(val, max(1, max_chars // 10))
    return Corpus(train=train, val=val)


def _thin(docs: list[Document], max_chars: int) -> list[Document]:
    """Every k-th document, k chosen so that about ``max_chars`` remain (at least one)."""
    step = max(1, sum(len(d.text) for d in docs) // max_chars)
    return docs[::step]
