# The results report: the kappa table (CSV + Markdown) and the figures, all as
# report() outputs; `snakemake --report results/report.html` also shows the QC
# pictures of the earlier stages (rule all requests them, see REPORT_TARGETS).
import os
from pathlib import Path

PRETRAINED_METHODS = eval_plan.pretrained(REPORT_METHODS)
LARGEST_FINETUNE_FRACTION = max(FINETUNE_FRACTIONS, key=float)

REPORT_TARGETS = [
    f"{RESULTS}/report/front_page.rst",
    f"{RESULTS}/tables/kappa.csv",
    f"{RESULTS}/tables/kappa.md",
    *expand(f"{RESULTS}/plots/kappa_{{evaluation}}.png", evaluation=EVALUATIONS),
    f"{RESULTS}/plots/confusion_test.png",
    f"{RESULTS}/plots/pretrain_loss.png",
    *([f"{RESULTS}/plots/finetune_curves.png"] if "finetune" in EVALUATIONS else []),
]
# The report's front page (the Snakefile's report: directive): written by rule
# report_front_page once the results are complete; before that, the static description.
REPORT_STATIC_DESCRIPTION = str(Path(LESIONCL_ROOT) / "workflow/report/workflow.rst")
REPORT_CONFIGFILES = [
    os.path.relpath(f) if not os.path.relpath(f).startswith("..") else str(f)
    for f in (workflow.overwrite_configfiles or workflow.configfiles)
]
_FRONT_PAGE = Path(f"{RESULTS}/report/front_page.rst")
REPORT_DESCRIPTION = (
    str(_FRONT_PAGE.resolve()) if _FRONT_PAGE.is_file() else REPORT_STATIC_DESCRIPTION
)
# QC pictures and metrics of the earlier stages (report() outputs of their own rules).
QC_TARGETS = [
    f"{RESULTS}/eyepacs/qc_crops.png",
    *(f"{RESULTS}/{source}/qc_boxes.png" for source in DETECTOR_SOURCES),
    f"{RESULTS}/lesions/qc_boxes.png",
    f"{RESULTS}/detector/metrics.json",
    f"{RESULTS}/detector/metrics_by_source.md",
    f"{RESULTS}/detector/qc_test.png",
    # the index against the generator's boxes: synthetic data only
    *(
        [f"{RESULTS}/lesions/quality.json", f"{RESULTS}/lesions/quality.png"]
        if config["eyepacs"]["source"] == "synthetic"
        else []
    ),
]


rule kappa_table:
    input:
        linear=REPORT_RESULTS["linear"],
        finetune=REPORT_RESULTS["finetune"],
    output:
        csv=report(
            f"{RESULTS}/tables/kappa.csv",
            caption="../report/kappa_table.rst",
            category="Evaluation",
            subcategory="Kappa table",
        ),
        md=report(
            f"{RESULTS}/tables/kappa.md",
            caption="../report/kappa_table.rst",
            category="Evaluation",
            subcategory="Kappa table",
        ),
    params:
        methods=REPORT_METHODS,
        fractions=[float(f) for f in EVAL_FRACTIONS],
        fractions_of={e: [float(f) for f in FRACTIONS_OF[e]] for e in EVALUATIONS},
        evaluations=EVALUATIONS,
    log:
        f"{LOGS}/kappa_table/kappa_table.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV_DATA
    script:
        "../scripts/kappa_table.py"


rule kappa_plot:
    input:
        f"{RESULTS}/tables/kappa.csv",
    output:
        report(
            f"{RESULTS}/plots/kappa_{{evaluation}}.png",
            caption="../report/kappa_plot.rst",
            category="Evaluation",
            subcategory="Kappa vs label fraction",
        ),
    wildcard_constraints:
        evaluation=r"linear|finetune",
    log:
        f"{LOGS}/kappa_plot/{{evaluation}}.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV_DATA
    script:
        "../scripts/kappa_plot.py"


rule confusion_plot:
    input:
        REPORT_RESULTS["linear"] + REPORT_RESULTS["finetune"],
    output:
        report(
            f"{RESULTS}/plots/confusion_test.png",
            caption="../report/confusion_test.rst",
            category="Evaluation",
            subcategory="Confusion matrices",
        ),
    params:
        methods=REPORT_METHODS,
        evaluations=EVALUATIONS,
    log:
        f"{LOGS}/confusion_plot/confusion_plot.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV_DATA
    script:
        "../scripts/confusion_plot.py"


rule pretrain_curves_plot:
    input:
        expand(f"{RESULTS}/pretrain/{{method}}/history.csv", method=PRETRAINED_METHODS),
    output:
        report(
            f"{RESULTS}/plots/pretrain_loss.png",
            caption="../report/pretrain_loss.rst",
            category="Pretraining",
        ),
    params:
        methods=PRETRAINED_METHODS,
    log:
        f"{LOGS}/pretrain_curves_plot/pretrain_curves_plot.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV_DATA
    script:
        "../scripts/pretrain_curves_plot.py"


rule finetune_curves_plot:
    input:
        expand(
            f"{RESULTS}/eval/finetune/{{method}}/frac{LARGEST_FINETUNE_FRACTION}_seed{FINETUNE_SEEDS[0]}_history.csv",
            method=REPORT_METHODS,
        ),
    output:
        report(
            f"{RESULTS}/plots/finetune_curves.png",
            caption="../report/finetune_curves.rst",
            category="Evaluation",
            subcategory="Fine-tuning curves",
        ),
    params:
        methods=REPORT_METHODS,
        title=f"Fine-tuning with {float(LARGEST_FINETUNE_FRACTION) * 100:g}% of the labels, seed {FINETUNE_SEEDS[0]}",
    log:
        f"{LOGS}/finetune_curves_plot/finetune_curves_plot.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV_DATA
    script:
        "../scripts/finetune_curves_plot.py"


# The report's front page (the workflow description `snakemake --report` opens with,
# see REPORT_DESCRIPTION): this run's config, data, software and date, and the paper's
# headline numbers beside ours. Written last, from the kappa table.
rule report_front_page:
    input:
        kappa=f"{RESULTS}/tables/kappa.csv",
        description=REPORT_STATIC_DESCRIPTION,
    output:
        f"{RESULTS}/report/front_page.rst",
    params:
        config=config,
        configfiles=REPORT_CONFIGFILES,
        methods=REPORT_METHODS,
    log:
        f"{LOGS}/report_front_page/report_front_page.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV_TORCH
    script:
        "../scripts/report_front_page.py"
