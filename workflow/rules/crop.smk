# The o_O border crop (docs/method.md "Crop"), sharded: rule crop_shard crops the
# rows i % n_shards == shard of labels.csv into 512 crops, and the train and val images
# also into detection crops (the box at the detector's input size, for lesions_predict);
# rule crop_merge checks every image is cropped or rejected (with its reason) exactly
# once and writes the manifest, the reject table and a QC picture.
# Rule crop_cache decodes the 512 crops of a split once into a uint8 memmap
# (results/cache/crops_{split}.npy + .csv), read by pretraining and the evaluation.

_CROP = config["crop"]
CROP_SHARDS = list(range(_CROP["n_shards"]))
# The cache files of each split, as named inputs of the rules that read them.
CROP_CACHE = {
    split: {
        f"{split}_npy": f"{RESULTS}/cache/crops_{split}.npy",
        f"{split}_csv": f"{RESULTS}/cache/crops_{split}.csv",
    }
    for split in ("train", "val", "test")
}


# The crop hyper-parameters: everything that changes a crop file. The detection crop is
# made at the detector's input size (detector.img_scale): the detector reads it as it is.
_CROP_PARAMS = {
    "detect_scale": config["detector"]["img_scale"],
} | {
    k: _CROP[k]
    for k in [
        "size",
        "detect_max_upscale",
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
    priority: PATH_TO_PRETRAINING
    threads: _CROP["workers"]
    resources:
        mem_mb=lambda wildcards, threads: 1000 + 500 * threads,
        # <= 0.1 s of one core per full-size image (README "Crop speed"), x5, + 10 min
        runtime=lambda wildcards, input, threads: int(
            10 + 0.5 * csv_rows(input.labels) / _CROP["n_shards"] / threads / 60
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
    priority: PATH_TO_PRETRAINING
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV_DATA
    script:
        "../scripts/crop_merge.py"


rule crop_cache:
    input:
        manifest=f"{RESULTS}/eyepacs/crop_manifest.csv",
    output:
        npy=f"{RESULTS}/cache/crops_{{split}}.npy",
        csv=f"{RESULTS}/cache/crops_{{split}}.csv",
    wildcard_constraints:
        split=r"train|val|test",
    params:
        size=config["crop"]["size"],
    log:
        f"{LOGS}/crop_cache/{{split}}.log",
    benchmark:
        f"{BENCH}/crop_cache/{{split}}.tsv"
    priority: PATH_TO_PRETRAINING
    threads: max(1, config["pretrain"]["workers"])  # the loader's workers
    resources:
        mem_mb=2000,
        # ~5 ms of one core per 512 JPEG, x4 margin, + 10 min
        runtime=lambda wildcards, input, threads: int(
            10 + 0.02 * csv_rows(input.manifest) / threads / 60
        ),
    conda:
        ENV_DATA
    script:
        "../scripts/crop_cache.py"
