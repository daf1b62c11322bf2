# Synthetic demo data: an EyePACS-like raw set in the Kaggle layout and an
# IDRiD-like "A. Segmentation" set, from one lesion generator (lesioncl.synthetic).
# The images carry their grade only through their lesions.

_SYN = config["synthetic"]


rule synthetic_eyepacs:
    output:
        raw=directory(f"{RESULTS}/synthetic/eyepacs"),
        truth=f"{RESULTS}/synthetic/eyepacs_truth.csv",
        lesions=f"{RESULTS}/synthetic/eyepacs_lesions.csv",
        qc=report(
            f"{RESULTS}/synthetic/qc_examples.png",
            caption="../report/synthetic_examples.rst",
            category="Synthetic data",
        ),
    params:
        seed=config["seed"],
        n_train=_SYN["eyepacs"]["n_train"],
        n_test=_SYN["eyepacs"]["n_test"],
        min_height=_SYN["eyepacs"]["min_height"],
        max_height=_SYN["eyepacs"]["max_height"],
        bad_files=_SYN["eyepacs"]["bad_files"],
        grade_distribution=_SYN["eyepacs"]["grade_distribution"],
        public_fraction=_SYN["eyepacs"]["public_fraction"],
        texture=_SYN["texture"],
    log:
        f"{LOGS}/synthetic_eyepacs/synthetic_eyepacs.log",
    benchmark:
        f"{BENCH}/synthetic_eyepacs/synthetic_eyepacs.tsv"
    threads: _SYN["workers"]
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        ENV_DATA
    script:
        "../scripts/synthetic_eyepacs.py"


rule synthetic_idrid:
    output:
        root=directory(f"{RESULTS}/synthetic/idrid"),
        truth=f"{RESULTS}/synthetic/idrid_truth.csv",
        qc=report(
            f"{RESULTS}/synthetic/qc_idrid.png",
            caption="../report/synthetic_idrid.rst",
            category="Synthetic data",
        ),
    params:
        seed=config["seed"],
        n_train=_SYN["idrid"]["n_train"],
        n_test=_SYN["idrid"]["n_test"],
        height=_SYN["idrid"]["height"],
        grade_distribution=_SYN["idrid"]["grade_distribution"],
        texture=_SYN["texture"],
    log:
        f"{LOGS}/synthetic_idrid/synthetic_idrid.log",
    benchmark:
        f"{BENCH}/synthetic_idrid/synthetic_idrid.tsv"
    threads: _SYN["workers"]
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        ENV_DATA
    script:
        "../scripts/synthetic_idrid.py"
