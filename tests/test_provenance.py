"""provenance: atomic JSON files get the mode the umask allows, like any other file."""

import os
import stat

import pytest

from specnb.measure import provenance


@pytest.fixture
def mask():
    """Set the process umask for one test, restore it after."""
    old = os.umask(0o022)
    os.umask(old)

    def set_(value: int) -> None:
        os.umask(value)

    yield set_
    os.umask(old)


@pytest.mark.parametrize("value", [0o022, 0o002, 0o077])
def test_atomic_json_honours_the_umask(tmp_path, mask, value):
    mask(value)
    path = provenance.write_json_atomic(tmp_path / "sub" / "result.json", {"a": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~value
    assert provenance.read_json(path) == {"a": 1}
    plain = tmp_path / "plain.json"
    plain.write_text("{}")
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_umask_reads_without_changing_it(mask):
    mask(0o027)
    assert provenance.umask() == 0o027
    assert provenance.umask() == 0o027


def test_overwrite_keeps_no_temporary_files(tmp_path):
    path = tmp_path / "cell.json"
    provenance.write_json_atomic(path, {"v": 1})
    provenance.write_json_atomic(path, {"v": 2})
    assert provenance.read_json(path) == {"v": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["cell.json"]
