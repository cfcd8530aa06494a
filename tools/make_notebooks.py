"""Write notebooks/*.ipynb from this one script (the .ipynb files are committed).

    python tools/make_notebooks.py                      # (re)write the 7 notebooks, no outputs
    python tools/make_notebooks.py --example RUN_DIR    # copy a grid run's results to notebooks/example_run
    python tools/make_notebooks.py --execute            # store outputs (what nbval compares against)
    python tools/make_notebooks.py --refresh            # all of it: default grid -> example_run -> execute
    python tools/make_notebooks.py --bench FILE         # a `specnb bench --json` record -> example_run/bench.json

Refresh whenever the embedded pair or a notebook changes, then commit notebooks/.

The method notebooks' parameter cells are generated from specnb.params.MethodParams, so their
defaults cannot drift from the validation. Cells whose output is deterministic carry
``# NBVAL_CHECK_OUTPUT`` (checked by ``pytest --nbval-lax``); timing/memory cells carry
``# NBVAL_IGNORE_OUTPUT``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specnb.params import NOTEBOOKS, MethodParams  # noqa: E402

NB_DIR = ROOT / "notebooks"
QUIET = "import warnings\n\nwarnings.filterwarnings(\"ignore\", message=\"IProgress not found\")  # tqdm without ipywidgets\n"
CHECK, IGNORE = "# NBVAL_CHECK_OUTPUT\n", "# NBVAL_IGNORE_OUTPUT\n"

COMMENTS = {
    "dtype": "float32 | bfloat16 | float16 (aliases fp32, bf16, fp16), both roles",
    "edge_dtype": "overrides dtype for the edge model when set",
    "cloud_dtype": "overrides dtype for the cloud model when set",
    "edge_model": "zoo:NAME, a local model folder or a Hugging Face id",
    "cloud_model": "must share the edge model's tokenizer",
    "edge_device": "auto | cpu | cuda | cuda:N",
    "cloud_device": "auto | cpu | cuda | cuda:N",
    "edge_threads": "CPU threads of the edge model (None: torch's default)",
    "cloud_threads": "CPU threads of the cloud model (None: torch's default)",
    "prompts": "builtin:NAME or a Spec-Bench style JSONL path",
    "num_prompts": "the first N prompts (None: all)",
    "max_new_tokens": "new tokens per prompt",
    "gamma": "draft length (speculative, hf_assisted)",
    "verify": "greedy | sample | rank (speculative)",
    "rank_k": "top-k of the rank rule",
    "schedule": "draft length per round: constant | heuristic | cost (speculative)",
    "optimized": "static caches + compiled steps in the speculative loop",
    "compile_steps": "compile optimized steps (None: the device's default)",
    "temperature": "0.0: greedy decoding",
    "seed": "random seed (sampling)",
    "warmup": "warm-up generations before measuring",
    "result_path": "None: outputs/adhoc/<method>-<dtype>.json",
}

INTROS = {
    "edge": ("Edge baseline / 边缘基线",
             "The **edge model alone**, autoregressive, on the edge device with its thread cap: how fast the small "
             "model is by itself.",
             "仅使用**边缘模型**进行自回归解码（边缘设备、限制线程数）：小模型单独运行的速度。"),
    "cloud": ("Cloud baseline / 云端基线",
              "The **cloud model alone**, autoregressive, plain Hugging Face-style decoding with a dynamic KV cache.",
              "仅使用**云端模型**进行自回归解码（动态 KV 缓存）。"),
    "cloud_optimized": ("Cloud optimized baseline / 云端优化基线",
                        "The **cloud model alone** with the strongest autoregressive set-up on its device (static KV "
                        "cache). Every speed-up in this project is quoted against this baseline, at the same cloud "
                        "dtype and device class.",
                        "使用该设备上最强的自回归配置（静态 KV 缓存）运行**云端模型**。本项目的所有加速比都以它为参考，"
                        "且要求云端精度和设备类别相同。"),
    "speculative": ("Speculative decoding / 推测解码",
                    "The **edge model drafts** `gamma` tokens, the **cloud model verifies** them in one forward pass "
                    "(`verify`: greedy, sample or rank). Greedy verification reproduces the cloud's greedy output.",
                    "**边缘模型起草** `gamma` 个词元，**云端模型**在一次前向计算中**验证**（greedy / sample / rank）。"
                    "贪心验证的输出与云端模型的贪心输出一致。"),
    "hf_assisted": ("Hugging Face assisted generation / HF 辅助生成",
                    "The peer reference: `cloud.generate(assistant_model=edge)` on the same pair with a constant draft "
                    "length `gamma`.",
                    "对照参考：在同一模型对上使用 `generate(assistant_model=...)`，草稿长度固定为 `gamma`。"),
}


def parameters_cell() -> nbformat.NotebookNode:
    lines = ["# Parameters (papermill injects overrides after this cell; they are validated in the next one)."]
    for name, field in MethodParams.model_fields.items():
        kind = str(field.annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
        kind = "str" if kind.startswith("Literal") else kind
        annotation = "" if "None" in kind else f": {kind}"  # papermill's parser cannot read `str | None`
        lines.append(f"{name}{annotation} = {field.default!r}  # {COMMENTS[name]}")
    cell = new_code_cell("\n".join(lines))
    cell.metadata["tags"] = ["parameters"]
    return cell


def method_notebook(method: str) -> nbformat.NotebookNode:
    title, en, zh = INTROS[method]
    nb_name = NOTEBOOKS[method]
    cells = [
        new_markdown_cell(
            f"# {title}\n\n{en}\n\n{zh}\n\n"
            "Defaults run on the embedded pair (`zoo:tiny-edge`, `zoo:tiny-cloud`) on the CPU. One setting from the "
            "shell / 命令行运行单个设置:\n\n"
            f"```bash\npapermill notebooks/{nb_name} out.ipynb -p dtype float32\n```\n\n"
            "The result (settings, per-prompt rows, aggregates, versions, devices, git commit, status) is written to "
            "`result_path` as JSON. / 结果以 JSON 写入 `result_path`。"),
        parameters_cell(),
        new_code_cell(
            QUIET + "from specnb import experiment, plots, report\n\n"
            f"METHOD = {method!r}\n"
            "experiment.quiet()\n"
            "settings = experiment.validate(METHOD, globals())  # a bad value stops here, naming the parameter"),
        new_code_cell(IGNORE + "record = experiment.run(METHOD, settings)\n"
                      "print(record['status'], '->', record['settings']['result_path'])"),
        new_markdown_cell("## Models / 模型"),
        new_code_cell(CHECK + "report.roles_table(record)"),
        new_markdown_cell("## Output per prompt / 每个提示词的输出\n\n"
                          "Deterministic for greedy decoding: token counts, acceptance and text. / "
                          "贪心解码下确定：词元数、接受数与文本。"),
        new_code_cell(CHECK + "report.prompt_table(record)"),
        new_markdown_cell("## Timing and memory / 时间与内存\n\nVaries from run to run. / 每次运行会有差异。"),
        new_code_cell(IGNORE + "report.timing_table(record).round(4)"),
        new_code_cell(IGNORE + "plots.record(record);"),
    ]
    return _notebook(cells)


def _notebook(cells: list) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def run_dir_cell(extra: str = "") -> nbformat.NotebookNode:
    cell = new_code_cell("# Parameters: the run folder written by `specnb grid` (None: the example run beside "
                         "this notebook).\nrun_dir = None" + extra)
    cell.metadata["tags"] = ["parameters"]
    return cell


def precision_notebook() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# Precision analysis / 精度分析\n\n"
            "Which dtype and device each method used, which comparisons are therefore unfair, how much the cloud "
            "model drifts in float16 / bfloat16, and what to do about it — generated from a run's results. It "
            "succeeds the study's hand-written precision report (`float32` edge on CPU vs `float16` cloud on GPU).\n\n"
            "每种方法使用了何种精度和设备、哪些比较因此不公平、云端模型在 float16 / bfloat16 下的数值漂移有多大、"
            "以及应如何处理——全部由运行结果生成。它取代了原研究手写的精度分析报告"
            "（CPU 上的 `float32` 边缘模型对比 GPU 上的 `float16` 云端模型）。"),
        run_dir_cell("\ndrift_device = None  # None: the run's cloud device; e.g. 'cpu' when float32 does not fit "
                     "the GPU\ndrift_prompts = 3  # prompts used for the drift measurement"),
        new_code_cell(
            QUIET + "from IPython.display import Markdown, display\n\n"
            "from specnb import drift, experiment, findings, plots, report\n\n"
            "experiment.quiet()\n"
            "run = report.resolve_run(run_dir)\n"
            "records = report.load_results(run)\n"
            "df = report.results_frame(records)\n"
            "audit = report.fairness_audit(df)\n"
            "speedups = report.speedups(df, audit)"),
        new_code_cell(CHECK + "print(f\"{len(df)} cells: {(df.status == 'ok').sum()} ok, "
                      "{(df.status != 'ok').sum()} failed\")"),
        new_markdown_cell(
            "## 1. Precision set-up of each method / 各方法的精度设置\n\n"
            "The table the study started from, generated from the results (ok cells). / "
            "原研究的起点表格，由结果（成功的单元）生成。"),
        new_code_cell(CHECK + "report.study_table(df)"),
        new_markdown_cell(
            "## 2. Fairness audit / 公平性审计\n\n"
            "Every pair the summary compares. A speed-up is quoted only when the run and its `cloud_optimized` "
            "reference share the cloud model, dtype, device class and workload; *within run* rows flag speculative "
            "runs whose edge and cloud differ in dtype or device class.\n\n"
            "列出摘要中比较的每一对结果。只有当运行与其 `cloud_optimized` 参考使用相同的云端模型、精度、设备类别和"
            "工作负载时才给出加速比；*within run*（运行内）行标出边缘与云端精度或设备类别不同的推测解码运行。"),
        new_code_cell(CHECK + "report.audit_view(audit)"),
        new_markdown_cell(
            "## 3. Numeric drift of the cloud model / 云端模型的数值漂移\n\n"
            "float16 and bfloat16 against float32 on the run's prompts: top-1 agreement of the next-token "
            "distributions along float32's greedy path, mean KL(p32 ‖ p), and the first new token where the "
            "dtype's own greedy output departs from float32's.\n\n"
            "在本次运行的提示词上比较 float16、bfloat16 与 float32：沿 float32 贪心路径的下一词元分布的 top-1 一致率、"
            "平均 KL(p32 ‖ p)，以及该精度自身的贪心输出首次偏离 float32 的位置。"),
        new_code_cell(IGNORE + "drift_rows, drift_note = drift.for_run(records, device=drift_device, "
                      "max_prompts=drift_prompts)\n"
                      "drift_summary = drift.summary(drift_rows)\n"
                      "print('measured on / 测量于:', drift_note)\n"
                      "drift_summary.round(6)"),
        new_code_cell(IGNORE + "drift_rows.round(6)"),
        new_code_cell(IGNORE + "plots.drift(drift_rows);"),
        new_markdown_cell(
            "## 4. Acceptance by (edge dtype, cloud dtype) / 各（边缘精度，云端精度）组合的接受率\n\n"
            "Speculative decoding, rows = edge dtype, columns = cloud dtype. / 推测解码：行为边缘精度，列为云端精度。"),
        new_code_cell(CHECK + "acceptance = report.acceptance_by_dtype(df)\nacceptance.round(4)"),
        new_code_cell(IGNORE + "plots.acceptance(df);"),
        new_markdown_cell("## 5. Recommendations / 建议\n\nGenerated from the tables above. / 由以上表格生成。"),
        new_code_cell(IGNORE + "recs = findings.recommendations(df, audit, speedups, drift_summary, acceptance)\n"
                      "display(Markdown(findings.markdown(recs)))"),
    ]
    return _notebook(cells)


def summary_notebook() -> nbformat.NotebookNode:
    cells = [
        new_markdown_cell(
            "# Summary / 汇总\n\n"
            "All cells of a grid run in one table (also written as `results.csv` in the run folder), then tokens/s, "
            "fair speed-ups against `cloud_optimized` (same cloud dtype and device class only), acceptance, "
            "accepted length, the draft/verify time split and peak memory. Failed cells are listed, not dropped.\n\n"
            "网格运行的所有单元汇总为一张表（同时写入运行目录的 `results.csv`），随后是每秒词元数、相对 "
            "`cloud_optimized` 的公平加速比（仅限相同云端精度与设备类别）、接受率、接受长度、起草/验证时间占比与"
            "峰值内存。失败的单元会被列出，而不是被悄悄丢弃。"),
        run_dir_cell(),
        new_code_cell(
            QUIET + "from specnb import experiment, plots, report\n\n"
            "experiment.quiet()\n"
            "run = report.resolve_run(run_dir)\n"
            "records = report.load_results(run)\n"
            "df = report.results_frame(records)\n"
            "speedups = report.speedups(df)\n"
            "if run_dir is not None:  # the example run stays untouched\n"
            "    report.summarize_run(run)"),
        new_markdown_cell("## Cells / 单元"),
        new_code_cell(CHECK + "df[['cell_id', 'method', 'edge_dtype', 'cloud_dtype', 'status', 'new_tokens']]"),
        new_markdown_cell("## Failed cells / 失败的单元"),
        new_code_cell(CHECK + "report.failed_cells(df)"),
        new_markdown_cell("## Tokens per second / 每秒词元数\n\nmethod x dtype"),
        new_code_cell(IGNORE + "report.metric_table(df, 'tokens_per_s').round(1)"),
        new_code_cell(IGNORE + "plots.tokens_per_s(df);"),
        new_markdown_cell("## Speed-up vs cloud_optimized / 相对 cloud_optimized 的加速比\n\n"
                          "Quoted only at the same cloud dtype and device class (`fair`); see the precision analysis "
                          "for every flagged pair. / 仅在云端精度与设备类别相同时给出（`fair`）；"
                          "所有被标记的比较见精度分析。"),
        new_code_cell(IGNORE + "speedups[['cell_id', 'dtype', 'device', 'reference', 'speedup', 'fair']].round(3)"),
        new_code_cell(IGNORE + "plots.speedups(speedups);"),
        new_markdown_cell("## Acceptance and accepted length / 接受率与接受长度"),
        new_code_cell(CHECK + "report.metric_table(df, 'acceptance_rate').round(4)"),
        new_code_cell(CHECK + "report.metric_table(df, 'mean_accepted_len').round(4)"),
        new_code_cell(IGNORE + "plots.acceptance(df);"),
        new_code_cell(IGNORE + "plots.accepted_lengths(report.accepted_lengths(records));"),
        new_markdown_cell("## Time split and peak memory / 时间占比与峰值内存"),
        new_code_cell(IGNORE + "report.time_split(df).round(4)"),
        new_code_cell(IGNORE + "report.metric_table(df, 'peak_mem_mib').round(1)"),
        new_markdown_cell(
            "## Benchmark / 基准测试 (`specnb bench`)\n\n"
            "The latest `specnb bench --json RUN/bench.json` record in the run folder: every method in one process, "
            "interleaved, medians; R1 (vs `cloud_optimized`), R2 (vs Hugging Face assisted generation at the same "
            "gamma, with its same-stack and compiled-vs-compiled forms), R3 (vs the expected speed-up "
            "S(alpha, gamma, c)), loop overhead, and what each lever buys measured alone. Timings: not compared by nbval.\n\n"
            "运行目录中最新的 `specnb bench --json RUN/bench.json` 记录：同一进程内交替运行所有方法（取中位数）；"
            "R1（相对 `cloud_optimized`）、R2（相对同一 gamma 下的 Hugging Face 辅助生成，并列出同栈与均编译两种对照）、"
            "R3（相对理论加速比 S(alpha, gamma, c)）、循环开销，以及逐项单独测得的各优化手段的收益。"),
        new_code_cell(IGNORE + "benches = report.load_bench(run)\n"
                      "bench = benches[-1] if benches else None\n"
                      "if bench is None:\n"
                      "    print('No bench record here; add one with: specnb bench --json', run / 'bench.json')\n"
                      "else:\n"
                      "    s = bench['settings']\n"
                      "    print(f\"{s['edge']} -> {s['cloud']}, {s['dtype']}, {s['limit']} prompts x {s['max_new_tokens']} tokens, \"\n"
                      "          f\"{s['reps']} reps, torch threads {bench.get('torch_threads')}; \"\n"
                      "          f\"{bench['machine'].get('cpus')} CPUs {bench['machine'].get('cpu') or ''}\")\n"
                      "    display(report.bench_ratios(bench).round(3))"),
        new_code_cell(IGNORE + "report.bench_levers(bench).round(3) if bench else None"),
        new_code_cell(IGNORE + "report.bench_methods(bench).round(3) if bench else None"),
        new_code_cell(IGNORE + "plots.bench(bench);"),
    ]
    return _notebook(cells)


def write_all() -> None:
    NB_DIR.mkdir(exist_ok=True)
    for method, name in NOTEBOOKS.items():
        nbformat.write(method_notebook(method), NB_DIR / name)
    nbformat.write(precision_notebook(), NB_DIR / "precision_analysis.ipynb")
    nbformat.write(summary_notebook(), NB_DIR / "summary.ipynb")


def copy_example(run_dir: Path) -> None:
    """notebooks/example_run/cells/<id>/result.json (+ manifest.json) from a finished grid run.

    A bench record already there (``bench.json``) is kept: it comes from ``specnb bench``, not the grid.
    """
    dest = NB_DIR / "example_run"
    bench = (dest / "bench.json").read_bytes() if (dest / "bench.json").is_file() else None
    shutil.rmtree(dest, ignore_errors=True)
    for res in sorted(run_dir.glob("cells/*/result.json")):
        target = dest / "cells" / res.parent.name / "result.json"
        target.parent.mkdir(parents=True)
        shutil.copy(res, target)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    if bench is not None:
        (dest / "bench.json").write_bytes(bench)


def execute_all(timeout: int = 600) -> None:
    """Run each notebook in place with its defaults (cwd = notebooks/), keeping the outputs."""
    import os

    from nbclient import NotebookClient

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as under nbval (notebooks/conftest.py)

    names = list(NOTEBOOKS.values()) + ["precision_analysis.ipynb", "summary.ipynb"]
    for name in names:
        path = NB_DIR / name
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NB_DIR)}}).execute()
        for cell in nb.cells:  # stderr (progress bars, warnings) never belongs in the stored outputs
            if cell.cell_type == "code":
                cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
        nbformat.write(nb, path)
        print("executed", name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--example", type=Path, help="grid run folder to copy into notebooks/example_run")
    parser.add_argument("--execute", action="store_true", help="execute the notebooks in place (stores outputs)")
    parser.add_argument("--bench", type=Path, help="a `specnb bench --json` record to show in the example summary")
    parser.add_argument("--refresh", action="store_true",
                        help="run params/default.yaml into outputs/example-refresh, copy it, execute")
    args = parser.parse_args()
    write_all()
    if args.bench:
        shutil.copy(args.bench, NB_DIR / "example_run" / "bench.json")
    if args.refresh:
        import subprocess

        out = ROOT / "outputs" / "example-refresh"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "specnb.cli", "grid", str(ROOT / "params" / "default.yaml"), "--out", str(out),
               "--no-analysis"]
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            sys.exit("the default grid had failed cells; not refreshing the example run")
        args.example, args.execute = out, True
    if args.example:
        copy_example(args.example)
    if args.execute:
        execute_all()


if __name__ == "__main__":
    main()
