"""Results -> DataFrame, the fairness audit, speed-up and category tables, findings (EN/中文), drift, plots.

The notebooks read ``specnb.report.<table>``: the names below are that face (the tables live in
:mod:`specnb.report.frame`).
"""

from .frame import (accepted_lengths, acceptance_by_dtype, audit_view, bench_levers, bench_methods,  # noqa: F401
                    bench_ratios, category_table, category_view, failed_cells, fairness_audit, for_reading,
                    load_bench, load_results, metric_table, prompt_table, resolve_run, results_frame, roles_table,
                    speedups, study_table, summarize_run, time_split, timing_table)
from .headline import headline, headline_text  # noqa: F401,E402
