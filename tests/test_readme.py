"""README.md's headline is the example run's: its table and its figures, computed from the committed records
(notebooks/example_run) by the report code, never copied by hand."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

from specnb.grid.analysis import load_results
from specnb.report.fairness import speedups
from specnb.report.frame import results_frame
from specnb.report.headline import headline

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "notebooks" / "example_run"


def section(title: str) -> str:
    """The README's text under ``## title``, up to the next section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def table_rows(text: str) -> list[list[str]]:
    """The rows of the first Markdown table in ``text``, header and rule left out."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_the_readme_headline_table_is_the_tools_headline_of_the_example_run():
    table = headline(speedups(results_frame(load_results(RUN))))
    quoted = table[table["same output"] == "yes"]  # the README leaves out the edge-alone rows, and says so
    want = [[r["method"], r["dtype"], r["vs"], r["speed-up (95% CI)"], r["verdict"]] for _, r in quoted.iterrows()]
    assert table_rows(section("Headline of the committed example run")) == want
    assert (table["same output"] == "no").sum() == 3  # "without its three edge-alone rows"


def test_the_readme_states_the_example_runs_conditions_as_recorded():
    manifest = json.loads((RUN / "manifest.json").read_text())
    cells = [json.loads(p.read_text()) for p in sorted((RUN / "cells").glob("*/result.json"))]
    text = " ".join(section("Headline of the committed example run").split())
    params = manifest["params"]["parameters"]
    (run,) = manifest["invocations"]
    took = datetime.fromisoformat(run["finished_at"]) - datetime.fromisoformat(run["started_at"])
    minutes, seconds = divmod(int(took.total_seconds()), 60)
    cloud_threads = {c["cloud"]["threads"] for c in cells if c.get("cloud")}
    edge_threads = {c["edge"]["threads"] for c in cells if c.get("edge")}
    cpus = {c["machine"]["cpu"] for c in cells} | {manifest["machine"]["cpu"]}
    assert f"commit `{manifest['git']['commit'][:7]}` ({manifest['created_at'][:10]})" in text
    assert f"{params['num_prompts']} `{manifest['params']['prompts']}` prompts x {params['max_new_tokens']} greedy tokens x " \
           f"{params['reps']} repetitions" in text
    assert cloud_threads == {2} and edge_threads == {1}
    assert "the edge on 1 thread, the cloud on 2 (the cell's cores)" in text
    assert cpus == {"Intel(R) Xeon(R) Processor"} and manifest["machine"]["cpus"] == 2 and "2-core Intel Xeon" in text
    assert "jobs: 1" in manifest["params_text"] and "one cell at a time" in text
    assert not manifest["git"]["dirty"]
    assert all(c["status"] == "ok" for c in cells) and run["ok"] == len(cells) == 20
    grid_time = f"{minutes} min {seconds} s"
    assert grid_time in section("Two commands") and grid_time in section("Presets")


def test_the_readme_keeps_its_two_commands():
    commands = re.findall(r"^make (\w+) ", section("Two commands"), flags=re.M)
    assert commands == ["demo", "test"]
