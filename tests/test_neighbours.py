"""The clock audit sees neighbours: other processes' CPU during a timed section, CPU pressure, the
repetitions' spread (specnb.measure.neighbours, specnb.measure.clock). From recorded data: no timing asserts."""

from __future__ import annotations

import os
import sys

import pytest

from specnb.measure import neighbours
from specnb.measure.clock import clock_audit
from specnb.measure.neighbours import CpuSample, between

# Recorded on the project's 2-core machine (Linux 6, USER_HZ 100), 2026-12-04, a pure-Python loop
# timed in a timed_section with 3 repetitions: once with no other process busy during it (others 0.0
# cores, though the load average was 3.2 from earlier work), once beside
# `timeout 20 python -c 'while True: pass'`. The probes were 3.9-4.0 ms in both: they did not see it.
QUIET = {"wall_s": 0.2544, "own_cpu_s": 0.26, "others_cpu_s": 0.0, "others_cores": 0.0, "own_cores": 1.022,
         "pressure": 0.0, "cores": 2}
QUIET_REPS = [{"others_cores": 0.0}, {"others_cores": 0.116}, {"others_cores": 0.0}]
BUSY = {"wall_s": 0.2271, "own_cpu_s": 0.23, "others_cpu_s": 0.22, "others_cores": 0.969, "own_cores": 1.013,
        "pressure": 0.001, "cores": 2}
BUSY_REPS = [{"others_cores": 0.976}, {"others_cores": 0.974}, {"others_cores": 0.958}]
PROBES = [0.00395, 0.00393, 0.00388, 0.00395]


def record(cid: str, near: dict | None, reps: list | None, spread: float | None = 0.02, start: float = 0.0) -> dict:
    timing = {"host": "h", "start": start, "end": start + 1, "probes": [{"where": "x", "seconds": p} for p in PROBES]}
    if near is not None:
        timing |= {"neighbours": near, "neighbours_reps": reps}
    return {"status": "ok", "cell": {"cell_id": cid}, "timing": timing, "aggregate": {"rep_spread": spread}}


def test_a_section_beside_a_busy_loop_is_flagged_and_a_quiet_one_is_not():
    audit = clock_audit([record("quiet", QUIET, QUIET_REPS), record("busy", BUSY, BUSY_REPS, start=2),
                         record("old", None, None, start=4)]).set_index("cell_id")
    assert not audit.loc["quiet", "disturbed"] and not audit.loc["old", "disturbed"]  # no figures: no flag
    busy = audit.loc["busy"]
    assert busy.disturbed and busy.others_cores == pytest.approx(0.969)
    assert "other processes used 0.97 cores on average (of 2)" in busy.verdict
    assert "busiest repetition 0.98 cores" in busy.verdict
    assert "其他进程平均占用 0.97 个核心" in busy.verdict_zh and "计时受干扰" in busy.verdict_zh
    assert audit.loc["busy", "worst_deviation"] == audit.loc["quiet", "worst_deviation"]  # the probe saw nothing


def test_repetitions_that_disagree_flag_the_cell_and_say_by_how_much():
    audit = clock_audit([record("spread", QUIET, QUIET_REPS, spread=0.26)]).set_index("cell_id")
    assert audit.loc["spread", "disturbed"]
    assert "spread 26%" in audit.loc["spread", "verdict"] and "相差 26%" in audit.loc["spread", "verdict_zh"]


def sample(wall, busy, own, pressure=None) -> CpuSample:
    return CpuSample(wall, busy, own, pressure, 2)


def test_others_are_the_machines_busy_time_less_ours_and_our_childrens():
    a = sample(10.0, 100.0, {1: 5.0}, pressure=1.0)
    b = sample(12.0, 103.0, {1: 6.0, 2: 0.5}, pressure=1.5)  # a child born meanwhile: ours, not a neighbour's
    n = between(a, b)
    assert n["own_cpu_s"] == pytest.approx(1.5) and n["others_cpu_s"] == pytest.approx(1.5)
    assert n["others_cores"] == pytest.approx(0.75) and n["pressure"] == pytest.approx(0.25)
    assert between(a, None) is None and between(b, a) is None


def test_proc_files_are_read_as_the_kernel_writes_them():
    stat = "cpu  66191 7 8477 175813 547 3 154 109 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
    assert neighbours.machine_busy_s(stat, 100) == pytest.approx((66191 + 7 + 8477 + 3 + 154 + 109) / 100)
    line = "4242 (python -c ) x) S 17 4242 17 0 -1 4194560 500 0 0 0 250 30 0 0 20 0 3 0 100 0 0"
    assert neighbours.process_cpu(line, 100) == (17, pytest.approx(2.8))
    psi = "some avg10=85.46 avg60=73.87 avg300=30.81 total=125756584\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    assert neighbours.pressure_total_s(psi) == pytest.approx(125.756584)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_timed_section_records_its_neighbours_whole_and_per_repetition(monkeypatch):
    from specnb.measure.timing import timed_section

    monkeypatch.setenv("SPECNB_TIMING_LOCK", "off")
    monkeypatch.setattr("specnb.measure.timing.probe", lambda: 0.001)
    with timed_section() as section:
        for rep in range(3):
            if rep:
                section.probe(f"rep {rep}")
            sum(range(10 ** 5))
    info = section.info
    assert set(info["neighbours"]) >= {"others_cores", "others_cpu_s", "own_cpu_s", "pressure", "wall_s"}
    assert len(info["neighbours_reps"]) == 3 and info["neighbours"]["cores"] == os.cpu_count()
    assert all(r["others_cpu_s"] >= 0 and r["own_cpu_s"] >= 0 for r in info["neighbours_reps"])
