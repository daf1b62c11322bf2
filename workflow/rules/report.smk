# The results report: the kappa table (CSV + Markdown) and the figures, all as
# report() outputs; `snakemake --report results/report.html` also shows the QC
# pictures of the earlier stages (rule all requests them, see REPORT_TARGETS).


rule kappa_table:
    input:
        linear=eval_results("linear"),
        finetune=eval_results("finetune"),
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
        methods=EVAL_METHODS,
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
        "../scripts/report_kappa_table.py"


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
        "../scripts/report_kappa_plot.py"


rule confusion_plot:
    input:
        eval_results("linear") + eval_results("finetune"),
    output:
        report(
            f"{RESULTS}/plots/confusion_test.png",
            caption="../report/confusion_test.rst",
            category="Evaluation",
            subcategory="Confusion matrices",
        ),
    params:
        methods=EVAL_METHODS,
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
        "../scripts/report_confusion.py"


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
        "../scripts/report_pretrain_curves.py"


rule finetune_curves_plot:
    input:
        expand(
            f"{RESULTS}/eval/finetune/{{method}}/frac{LARGEST_FINETUNE_FRACTION}_seed{FINETUNE_SEEDS[0]}_history.csv",
            method=EVAL_METHODS,
        ),
    output:
        report(
            f"{RESULTS}/plots/finetune_curves.png",
            caption="../report/finetune_curves.rst",
            category="Evaluation",
            subcategory="Fine-tuning curves",
        ),
    params:
        methods=EVAL_METHODS,
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
        "../scripts/report_finetune_curves.py"


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
        methods=EVAL_METHODS,
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
