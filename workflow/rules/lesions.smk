# The lesion index (docs/method.md "Lesion index"): the detector runs over the
# detection-resolution crops of the EyePACS train and val images in shards
# (rows i % n_shards == shard of the train+val rows of crop_manifest.csv); boxes are
# rescaled into the crop.size crops and filtered into the authors' pickle format.

_LI = config["lesion_index"]
INDEX_SHARDS = list(range(_LI["n_shards"]))


rule lesions_predict:
    input:
        manifest=f"{RESULTS}/eyepacs/crop_manifest.csv",
        model=f"{RESULTS}/detector/model.pth",
        config=f"{RESULTS}/detector/mmdet_config.py",
    output:
        f"{RESULTS}/lesions/detections/shard_{{shard}}.csv",
    wildcard_constraints:
        shard=r"\d+",
    params:
        n_shards=_LI["n_shards"],
        settings=dict(batch_size=_LI["batch_size"], size=config["crop"]["size"]),
        device=torch_device(),
    log:
        f"{LOGS}/lesions_predict/shard_{{shard}}.log",
    benchmark:
        f"{BENCH}/lesions_predict/shard_{{shard}}.tsv"
    priority: PATH_TO_PRETRAINING
    threads: _LI["workers"] + 2
    resources:
        **gpu_resources("lesion_index"),
        mem_mb=8000,
        # minutes for one shard: ~1 s per image on CPU, plus 10
        runtime=lambda wildcards, input, attempt: int(
            10 + csv_rows(input.manifest) / _LI["n_shards"] / 60
        )
        * attempt,
    conda:
        ENV_TORCH
    script:
        "../scripts/lesions_predict.py"


rule lesions_index:
    input:
        shards=expand(
            f"{RESULTS}/lesions/detections/shard_{{shard}}.csv", shard=INDEX_SHARDS
        ),
        manifest=f"{RESULTS}/eyepacs/crop_manifest.csv",
    output:
        pkl=f"{RESULTS}/lesions/lesion_index.pkl",
        json=f"{RESULTS}/lesions/lesion_index.json",
        summary=report(
            f"{RESULTS}/lesions/summary.json",
            caption="../report/lesions_summary.rst",
            category="Lesion index",
        ),
        histogram=report(
            f"{RESULTS}/lesions/boxes_per_image.png",
            caption="../report/lesions_histogram.rst",
            category="Lesion index",
        ),
        qc=report(
            f"{RESULTS}/lesions/qc_boxes.png",
            caption="../report/lesions_qc_boxes.rst",
            category="Lesion index",
        ),
    params:
        settings=dict(
            score_threshold=_LI["score_threshold"],
            max_box_size=_LI["max_box_size"],
            border_margin=_LI["border_margin"],
            size=config["crop"]["size"],
            qc_images=_LI["qc_images"],
            seed=config["seed"],
        ),
    log:
        f"{LOGS}/lesions_index/lesions_index.log",
    priority: PATH_TO_PRETRAINING
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        ENV_TORCH
    script:
        "../scripts/lesions_index.py"


# The window sources beside the detector's index (lesioncl.lesions.controls,
# docs/window-sources.md): the random-window control (same images, box counts and sizes,
# uniform places in the field of view), the salient-window control (same images and box
# sizes, centred on each image's most contrasted small structures: a detector that knows
# nothing of lesions) and, on synthetic data, the generator's true boxes. Each feeds its
# own lesion-based pretraining (lesion_cl_random, lesion_cl_salient, lesion_cl_truth).
_TRUTH_LESIONS = f"{RESULTS}/synthetic/eyepacs_lesions.csv"


rule lesions_random_index:
    input:
        **CROP_CACHE["train"],
        **CROP_CACHE["val"],
        index=f"{RESULTS}/lesions/lesion_index.pkl",
    output:
        pkl=f"{RESULTS}/lesions/random/lesion_index.pkl",
        json=f"{RESULTS}/lesions/random/lesion_index.json",
    params:
        settings=dict(
            border_margin=_LI["border_margin"],
            size=config["crop"]["size"],
            seed=config["seed"],
        ),
    log:
        f"{LOGS}/lesions_random_index/lesions_random_index.log",
    priority: PATH_TO_PRETRAINING
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        ENV_TORCH
    script:
        "../scripts/lesions_random_index.py"


rule lesions_salient_index:
    input:
        **CROP_CACHE["train"],
        **CROP_CACHE["val"],
        index=f"{RESULTS}/lesions/lesion_index.pkl",
    output:
        pkl=f"{RESULTS}/lesions/salient/lesion_index.pkl",
        json=f"{RESULTS}/lesions/salient/lesion_index.json",
    params:
        settings=dict(
            border_margin=_LI["border_margin"],
            size=config["crop"]["size"],
            seed=config["seed"],
        ),
    log:
        f"{LOGS}/lesions_salient_index/lesions_salient_index.log",
    priority: PATH_TO_PRETRAINING
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        ENV_TORCH
    script:
        "../scripts/lesions_salient_index.py"


rule lesions_truth_index:
    input:
        lesions=_TRUTH_LESIONS,
        manifest=f"{RESULTS}/eyepacs/crop_manifest.csv",
    output:
        pkl=f"{RESULTS}/lesions/truth/lesion_index.pkl",
        json=f"{RESULTS}/lesions/truth/lesion_index.json",
        summary=f"{RESULTS}/lesions/truth/summary.json",
    params:
        settings=dict(
            truth_kinds=list(_LI["truth_kinds"]),
            max_box_size=_LI["max_box_size"],
            border_margin=_LI["border_margin"],
            size=config["crop"]["size"],
        ),
    log:
        f"{LOGS}/lesions_truth_index/lesions_truth_index.log",
    priority: PATH_TO_PRETRAINING
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        ENV_TORCH
    script:
        "../scripts/lesions_truth_index.py"


rule lesions_quality:
    input:
        **CROP_CACHE["train"],
        **CROP_CACHE["val"],
        index=f"{RESULTS}/lesions/lesion_index.pkl",
        random=f"{RESULTS}/lesions/random/lesion_index.pkl",
        lesions=_TRUTH_LESIONS,
        manifest=f"{RESULTS}/eyepacs/crop_manifest.csv",
    output:
        json=report(
            f"{RESULTS}/lesions/quality.json",
            caption="../report/lesions_quality.rst",
            category="Lesion index",
        ),
        plot=report(
            f"{RESULTS}/lesions/quality.png",
            caption="../report/lesions_quality.rst",
            category="Lesion index",
        ),
    params:
        settings=dict(
            window=config["pretrain"]["patch_size"],
            size=config["crop"]["size"],
            seed=config["seed"],
        ),
    log:
        f"{LOGS}/lesions_quality/lesions_quality.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        ENV_TORCH
    script:
        "../scripts/lesions_quality.py"
