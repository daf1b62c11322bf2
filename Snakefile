# Lesion-based contrastive learning for DR grading (MICCAI 2021), reproduced.
# Run: snakemake --cores all --use-conda   (demo: config/config.yaml)


include: "workflow/rules/common.smk"
include: "workflow/rules/synthetic.smk"
include: "workflow/rules/eyepacs.smk"
include: "workflow/rules/crop.smk"
include: "workflow/rules/idrid.smk"
include: "workflow/rules/ddr.smk"
include: "workflow/rules/detector.smk"
include: "workflow/rules/lesions.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/external.smk"
include: "workflow/rules/report.smk"


# The front page of `snakemake --report`: this run's config, data, software, date and the
# paper's headline numbers beside ours (rule report_front_page), or the static description.
report: REPORT_DESCRIPTION


rule all:
    input:
        f"{RESULTS}/eyepacs/labels.csv",
        f"{RESULTS}/eyepacs/crop_manifest.csv",
        f"{RESULTS}/eyepacs/crop_rejects.csv",
        REPORT_TARGETS,
        QC_TARGETS,
        EXTERNAL_TARGETS,
    default_target: True
