# The o_O border crop (docs/method.md "Crop"), sharded: rule crop_shard crops the
# rows i % n_shards == shard of labels.csv into 512 crops + detection-resolution
# crops; rule crop_merge checks every image is cropped or rejected (with its
# reason) exactly once and writes the manifest, the reject table and a QC picture.

_CROP = config["crop"]


# The crop hyper-parameters: everything that changes a crop file.
_CROP_PARAMS = {
    k: _CROP[k]
    for k in [
        "size",
        "detect_max_size",
        "bright_margin",
        "wide_ratio",
        "strip_divisor",
        "min_box_fraction",
        "min_mean_intensity",
        "search_min_height",
        "detect_quality",
        "reject_no_foreground",
    ]
}


rule crop_shard:
    input:
        labels=f"{RESULTS}/eyepacs/labels.csv",
    output:
        crops=directory(f"{RESULTS}/eyepacs/crops/shard_{{shard}}"),
        det=directory(f"{RESULTS}/eyepacs/crops_det/shard_{{shard}}"),
        table=f"{RESULTS}/eyepacs/crops/shard_{{shard}}.csv",
    wildcard_constraints:
        shard=r"\d+",
    params:
        n_shards=_CROP["n_shards"],
        crop=_CROP_PARAMS,
    log:
        f"{LOGS}/crop_shard/shard_{{shard}}.log",
    benchmark:
        f"{BENCH}/crop_shard/shard_{{shard}}.tsv"
    # on the path to pretraining: first when cores are scarce (the baselines' evaluations wait)
    priority: 10
    threads: _CROP["workers"]
    resources:
        mem_mb=lambda wildcards, threads: 1000 + 500 * threads,
        # ~0.25 s of one core per full-size image (with a 1600 px detection crop),
        # doubled, + 10 min; labels.csv has a header line
        runtime=lambda wildcards, input, threads: int(
            10
            + 0.5
            * sum(1 for _ in open(input.labels))
            / _CROP["n_shards"]
            / threads
            / 60
        ),
    conda:
        ENV_DATA
    script:
        "../scripts/crop_shard.py"


rule crop_merge:
    input:
        labels=f"{RESULTS}/eyepacs/labels.csv",
        tables=expand(f"{RESULTS}/eyepacs/crops/shard_{{shard}}.csv", shard=CROP_SHARDS),
        crops=expand(f"{RESULTS}/eyepacs/crops/shard_{{shard}}", shard=CROP_SHARDS),
        det=expand(f"{RESULTS}/eyepacs/crops_det/shard_{{shard}}", shard=CROP_SHARDS),
    output:
        manifest=f"{RESULTS}/eyepacs/crop_manifest.csv",
        rejects=report(
            f"{RESULTS}/eyepacs/crop_rejects.csv",
            caption="../report/crop_rejects.rst",
            category="EyePACS crop",
        ),
        summary=f"{RESULTS}/eyepacs/crop_summary.json",
        qc=report(
            f"{RESULTS}/eyepacs/qc_crops.png",
            caption="../report/qc_crops.rst",
            category="EyePACS crop",
        ),
    params:
        n_shards=_CROP["n_shards"],
        qc_images=_CROP["qc_images"],
    log:
        f"{LOGS}/crop_merge/crop_merge.log",
    benchmark:
        f"{BENCH}/crop_merge/crop_merge.tsv"
    # on the path to pretraining: first when cores are scarce (the baselines' evaluations wait)
    priority: 10
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV_DATA
    script:
        "../scripts/crop_merge.py"
