"""Timed sections: the machine-wide lock, the recorded start/end, the clock probe and the audit
of a run whose timing was disturbed on purpose. No timing asserts: only relations the lock and
the probe guarantee (no overlap; a core shared with a busy loop slows the probe)."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import time

import pytest

from specnb.study import experiment
from specnb.measure import timing
from specnb.measure.clock import clock_audit
from specnb.study.params import MethodParams


def params(tiny_pair, path, **kw) -> MethodParams:
    base = dict(edge_model=tiny_pair["edge"], cloud_model=tiny_pair["cloud"], prompts="builtin:code",
                num_prompts=2, max_new_tokens=6, warmup=1, reps=3, result_path=str(path))
    return MethodParams(**(base | kw))


def _run_cell(method: str, p: MethodParams, lock: str) -> None:
    os.environ["SPECNB_TIMING_LOCK"] = lock
    experiment.run(method, p)


def test_concurrent_runs_never_time_at_once(tiny_pair, tmp_path):
    lock = str(tmp_path / "timing.lock")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_run_cell, args=(m, params(tiny_pair, tmp_path / f"{m}.json"), lock))
             for m in ("cloud", "speculative", "edge")]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(600)
        assert proc.exitcode == 0
    records = [experiment_record(tmp_path / f"{m}.json") for m in ("cloud", "speculative", "edge")]
    sections = [(r["method"], r["timing"]) for r in records]
    assert all(s["start"] < s["end"] for _, s in sections)
    assert timing.overlaps(sections) == []
    assert all(r["timing"]["lock"] == "timing.lock" and len(r["timing"]["probes"]) == 4 for r in records)  # before, 2 between, after
    assert all(len(r["timing"]["entries"]) == 3 * 2 for r in records)  # reps x prompts


def experiment_record(path):
    import json

    return json.loads(path.read_text())


def test_overlaps_are_found_per_host():
    s = lambda start, end, host="a": {"start": start, "end": end, "host": host}  # noqa: E731
    assert timing.overlaps([("x", s(0, 2)), ("y", s(1, 3)), ("z", s(3, 4))]) == [("x", "y")]
    assert timing.overlaps([("x", s(0, 2)), ("y", s(1, 3, host="b"))]) == []


def test_the_lock_makes_a_second_holder_wait(tmp_path):
    path = tmp_path / "l.lock"
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from specnb.measure.timing import exclusive; from pathlib import Path\n"
            "print('ready', flush=True)\nwith exclusive(Path(sys.argv[1])) as waited: print(round(waited, 2))")
    with timing.exclusive(path):
        child = subprocess.Popen([sys.executable, "-c", code, str(path), str(timing.Path(__file__).parents[1])],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"  # imported; now it asks for the lock
        time.sleep(1.0)
        assert child.poll() is None  # still waiting for us
    out, _ = child.communicate(timeout=60)
    assert float(out) >= 0.9


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux CPU affinity")
def test_a_busy_core_during_one_cells_timing_is_flagged_in_both_languages(tiny_pair, tmp_path):
    from specnb.report import findings, frame

    core = sorted(os.sched_getaffinity(0))[0]
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        for i in range(3):
            experiment.run("cloud", params(tiny_pair, tmp_path / "run" / f"clean{i}.json", reps=2))
        busy = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"])
        try:
            time.sleep(0.5)
            experiment.run("cloud", params(tiny_pair, tmp_path / "run" / "busy.json", reps=2))
        finally:
            busy.kill()
            busy.wait()
    finally:
        os.sched_setaffinity(0, before)
    records = frame.load_results(tmp_path / "run")
    clock = clock_audit(records).set_index("cell_id")
    assert bool(clock.loc["busy", "disturbed"])
    assert clock.loc["busy", "worst_deviation"] > max(abs(clock.loc[f"clean{i}", "worst_deviation"]) for i in range(3))
    assert "TIMING DISTURBED" in clock.loc["busy", "verdict"] and "计时受干扰" in clock.loc["busy", "verdict_zh"]
    df = frame.results_frame(records)
    text = findings.markdown(findings.on_clock(clock.reset_index(), df))
    assert "busy" in text and "TIMING DISTURBED" in text and "计时受干扰" in text


def test_setups_share_the_lock_but_wait_for_a_timed_section(tmp_path, monkeypatch):
    import fcntl

    path = tmp_path / "l.lock"
    monkeypatch.setenv("SPECNB_TIMING_LOCK", str(path))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from specnb.measure.timing import setup_section\n"
            "print('ready', flush=True)\nwith setup_section() as waited: print(round(waited, 2))")
    root = str(timing.Path(__file__).parents[1])
    with timing.exclusive(path, fcntl.LOCK_SH):  # another set-up: no wait
        out = subprocess.run([sys.executable, "-c", code, root], capture_output=True, text=True, timeout=120).stdout
        assert float(out.split()[-1]) < 0.5
    with timing.exclusive(path):  # a timed section: the set-up waits for it
        child = subprocess.Popen([sys.executable, "-c", code, root], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        assert child.poll() is None
    out, _ = child.communicate(timeout=60)
    assert float(out) >= 0.9
