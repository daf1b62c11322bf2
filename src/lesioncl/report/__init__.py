"""The results report: the kappa table (CSV + Markdown) and its figures.

Every run of ``evaluation.smk`` writes one JSON (method x evaluation x fraction x seed).
:func:`kappa_table` aggregates them over seeds into one row per method x evaluation
x fraction – every configured cell is present, marked ``skipped`` (e.g. ImageNet
weights unavailable offline) or ``missing`` when it has no result – and
:func:`kappa_markdown` lays the test kappa out as methods x fractions, one block
per evaluation, as mean ± std (sample std, ddof=1) when there is more than one seed.

The parts: :mod:`.tables` (rule ``kappa_table``), :mod:`.figures` (the plot rules) and
:mod:`.frontpage` (rule ``report_front_page``: the report's front page). The public
names of the first two are importable from here.
"""

from lesioncl.report.figures import (
    confusion_plot_from_results,
    kappa_plot_from_table,
    plot_confusion_matrices,
    plot_finetune_curves,
    plot_kappa_vs_fraction,
    plot_pretrain_curves,
)
from lesioncl.report.tables import (
    EVALUATION_TITLES,
    EVALUATIONS,
    TABLE_COLUMNS,
    build_kappa_table,
    format_cell,
    fraction_label,
    kappa_markdown,
    kappa_table,
    load_results,
    write_tables,
)

__all__ = [
    "EVALUATIONS",
    "EVALUATION_TITLES",
    "TABLE_COLUMNS",
    "build_kappa_table",
    "confusion_plot_from_results",
    "format_cell",
    "fraction_label",
    "kappa_markdown",
    "kappa_plot_from_table",
    "kappa_table",
    "load_results",
    "plot_confusion_matrices",
    "plot_finetune_curves",
    "plot_kappa_vs_fraction",
    "plot_pretrain_curves",
    "write_tables",
]
