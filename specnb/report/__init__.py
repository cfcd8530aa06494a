"""Results -> DataFrame, the fairness audit, speed-up and category tables, findings (EN/中文), drift, plots.

The notebooks read ``specnb.report.<table>``: the names below are that face; the code lives in
:mod:`~specnb.report.frame` (records -> DataFrame), :mod:`~specnb.report.fairness` (the audit, speed-ups),
:mod:`~specnb.report.categories` (per prompt category), :mod:`~specnb.report.tables` (tables for reading),
:mod:`~specnb.report.bench_records` (``specnb bench`` records) and :mod:`~specnb.report.headline`.
"""

from .frame import load_results, resolve_run, results_frame  # noqa: F401
from .fairness import fairness_audit, speedups  # noqa: F401
from .categories import category_table, category_view  # noqa: F401
from .tables import (acceptance_by_dtype, accepted_lengths, audit_view, drafted_lengths, failed_cells,  # noqa: F401
                     for_reading, metric_table, prompt_table, roles_table, study_table, summarize_run, time_split,
                     timing_table)
from .bench_records import bench_levers, bench_methods, bench_ratios, load_bench  # noqa: F401
from .headline import headline  # noqa: F401
