# EyePACS: the Kaggle download (eyepacs.source: kaggle), unpacking of the
# multi-part archives, validation of the raw folder and the labels table
# results/eyepacs/labels.csv (image, patient_id, eye, level, split, path).
# Split: train = Kaggle train; val = Kaggle test Usage=Public; test = Usage=Private.
from lesioncl.eyepacs.rawdir import labels_rule_inputs

_EYEPACS = config["eyepacs"]
_EYEPACS_DL = _EYEPACS["download_dir"]


# Network: resumable (complete files are skipped), so a retry continues where the
# failed attempt stopped. Runs on the submitting host (compute nodes are often offline).
rule eyepacs_download:
    output:
        manifest=f"{_EYEPACS_DL}/archives/download_manifest.json",
    params:
        competition=_EYEPACS["competition"],
        download_dir=lambda wildcards, output: str(Path(output.manifest).parent.parent),
    log:
        f"{LOGS}/eyepacs_download/eyepacs_download.log",
    benchmark:
        f"{BENCH}/eyepacs_download/eyepacs_download.tsv"
    retries: 3
    localrule: True
    resources:
        mem_mb=2000,
        runtime=24 * 60,
    conda:
        ENV_DATA
    script:
        "../scripts/eyepacs_download.py"


# A corrupt part (CRC error) is deleted together with the manifest, so that the
# next run downloads just that part again.
rule eyepacs_unpack:
    input:
        manifest=rules.eyepacs_download.output.manifest,
    output:
        raw=directory(f"{_EYEPACS_DL}/raw"),
    params:
        archives_dir=lambda wildcards, input: str(Path(input.manifest).parent),
    log:
        f"{LOGS}/eyepacs_unpack/eyepacs_unpack.log",
    benchmark:
        f"{BENCH}/eyepacs_unpack/eyepacs_unpack.tsv"
    resources:
        mem_mb=2000,
        runtime=8 * 60,
    conda:
        ENV_DATA
    script:
        "../scripts/eyepacs_unpack.py"


rule eyepacs_labels:
    input:
        unpack(lambda wildcards: labels_rule_inputs(_EYEPACS, RESULTS)),
    output:
        labels=f"{RESULTS}/eyepacs/labels.csv",
        summary=f"{RESULTS}/eyepacs/labels_summary.json",
        problems=f"{RESULTS}/eyepacs/label_problems.csv",
    params:
        max_missing=_EYEPACS["max_missing"],
        expect_full=_EYEPACS["source"] != "synthetic",
        error_problems=f"{LOGS}/eyepacs_labels/label_problems.csv",
    log:
        f"{LOGS}/eyepacs_labels/eyepacs_labels.log",
    benchmark:
        f"{BENCH}/eyepacs_labels/eyepacs_labels.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV_DATA
    script:
        "../scripts/eyepacs_labels.py"
