# Synthetic demo data: an EyePACS-like raw set in the Kaggle layout and an
# IDRiD-like "A. Segmentation" set, from one lesion generator (lesioncl.synthetic).
# The images carry their grade only through their lesions.

_SYN = config["synthetic"]
# Each generator's settings (EyepacsSetSettings, IdridSetSettings): the workflow's seed,
# synthetic.texture and its whole synthetic.<set> section (every key decides the images;
# synthetic.workers only how fast they are drawn). Keys sorted: Snakemake compares
# params by their repr, so the order of keys in a config file must not rerun a job.
_SYN_SETTINGS = {
    name: dict(
        sorted(
            {
                "seed": config["seed"],
                "texture": _SYN["texture"],
                "lesion_scale": _SYN["lesion_scale"],
                # only when drawn: the images of earlier releases keep their params
                **(
                    {"small_vessels": _SYN["small_vessels"]}
                    if _SYN["small_vessels"]
                    else {}
                ),
                **_SYN[name],
            }.items()
        )
    )
    for name in ("eyepacs", "idrid", "ddr")
}


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
        settings=_SYN_SETTINGS["eyepacs"],
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
        settings=_SYN_SETTINGS["idrid"],
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


# DDR's lesion part in its layout (ddr.source: synthetic, used when detector.datasets
# names ddr): lesion_segmentation/ masks and lesion_detection/ VOC files, with DDR's
# known faults (synthetic.ddr.quirks).
rule synthetic_ddr:
    output:
        root=directory(f"{RESULTS}/synthetic/ddr"),
        truth=f"{RESULTS}/synthetic/ddr_truth.csv",
        qc=report(
            f"{RESULTS}/synthetic/qc_ddr.png",
            caption="../report/synthetic_ddr.rst",
            category="Synthetic data",
        ),
    params:
        settings=_SYN_SETTINGS["ddr"],
    log:
        f"{LOGS}/synthetic_ddr/synthetic_ddr.log",
    benchmark:
        f"{BENCH}/synthetic_ddr/synthetic_ddr.tsv"
    threads: _SYN["workers"]
    resources:
        mem_mb=2000,
        runtime=60,
    conda:
        ENV_DATA
    script:
        "../scripts/synthetic_ddr.py"
