# External evaluation (README "External evaluation"): every evaluated backbone graded on
# other graded sets (external.sets: IDRiD grading, APTOS 2019, Messidor-2, DDR grading),
# each read from its published layout, cropped like EyePACS, and evaluated by the
# EyePACS linear recipe on its own splits (lesioncl.external).
#   synthetic_external   -> results/synthetic/external/{set}/ (sets given as `synthetic`)
#   external_labels      layout -> results/external/{set}/labels.csv, layout_rejects.csv
#   external_crop        -> crops/, crop_manifest.csv, rejects.csv, summary.json, qc_crops.png
#   external_cache       -> cache/crops_{split}.npy + .csv   (use rule crop_cache)
#   external_fractions   -> fractions/seed{seed}.csv          (use rule eval_fractions)
#   external_features    -> features/{method}/{train,val,test}.npz (one job a method)
#   external_linear      -> linear/{method}/frac{f}_seed{s}.json (use rule eval_linear)
#   external_finetune    -> finetune/{method}/frac{f}_seed{s}.json (use rule eval_finetune)
#   external_transfer    EyePACS linear head -> transfer_linear/{method}/seed{s}.json
#   external_transfer_finetune  EyePACS fine-tuned grader -> transfer_finetune/{method}/seed{s}.json
#   external_table       -> results/tables/external.csv, external.md
_EXT = config["external"]
EXTERNAL_SETS = list(_EXT["sets"])
EXT_DIR = f"{RESULTS}/external"
EXT_FRACTIONS = [fraction_tag(f) for f in _EXT["fractions"]]
EXT_SEEDS = list(_EXT["seeds"] or _EVAL["seeds"])
# the synthetic graded sets' settings (GradedSetSettings; keys sorted, as _SYN_SETTINGS)
_SYN_EXTERNAL = dict(
    sorted(
        {
            "seed": config["seed"],
            "texture": _SYN["texture"],
            "lesion_scale": _SYN["lesion_scale"],
            **(
                {"small_vessels": _SYN["small_vessels"]}
                if _SYN["small_vessels"]
                else {}
            ),
            **_SYN["external"],
        }.items()
    )
)
# External validation: the head of EyePACS's linear evaluation at its largest label
# fraction grades each set's test split as it is.
TRANSFER_FRACTION = max(EVAL_FRACTIONS, key=float)
EXTERNAL_RESULTS = {
    name: expand(
        f"{EXT_DIR}/{name}/linear/{{method}}/frac{{fraction}}_seed{{seed}}.json",
        method=EVAL_METHODS,
        fraction=EXT_FRACTIONS,
        seed=EXT_SEEDS,
    )
    + expand(
        f"{EXT_DIR}/{name}/transfer_linear/{{method}}/seed{{seed}}.json",
        method=EVAL_METHODS if _EXT["transfer"] else [],
        seed=EVAL_SEEDS,
    )
    for name in EXTERNAL_SETS
}
# Fine-tuning within each set (external.finetune, when evaluation.finetune is enabled):
# the EyePACS recipe on the set's own splits, at the external fractions.
EXT_FINETUNE = _EXT["finetune"] and _FT["enabled"]
EXT_FINETUNE_SEEDS = list(_FT["seeds"] or EXT_SEEDS)
for _name in EXTERNAL_SETS:
    EXTERNAL_RESULTS[_name] += expand(
        f"{EXT_DIR}/{_name}/finetune/{{method}}/frac{{fraction}}_seed{{seed}}.json",
        method=EVAL_METHODS if EXT_FINETUNE else [],
        fraction=EXT_FRACTIONS,
        seed=EXT_FINETUNE_SEEDS,
    )
# ... and the grader fine-tuned on EyePACS at its largest label fraction (kept by
# eval_finetune), when EyePACS fine-tuning runs.
FINETUNE_TRANSFER_FRACTION = max(FINETUNE_FRACTIONS, key=float)
for _name in EXTERNAL_SETS:
    EXTERNAL_RESULTS[_name] += expand(
        f"{EXT_DIR}/{_name}/transfer_finetune/{{method}}/seed{{seed}}.json",
        method=EVAL_METHODS if _EXT["transfer"] and _FT["enabled"] else [],
        seed=FINETUNE_SEEDS,
    )
EXTERNAL_TARGETS = (
    [
        f"{RESULTS}/tables/external.csv",
        f"{RESULTS}/tables/external.md",
        *expand(f"{EXT_DIR}/{{set}}/qc_crops.png", set=EXTERNAL_SETS),
    ]
    if EXTERNAL_SETS
    else []
)


wildcard_constraints:
    set="idrid_grading|aptos2019|messidor2|ddr_grading",


rule synthetic_external:
    output:
        root=directory(f"{RESULTS}/synthetic/external/{{set}}"),
        summary=f"{RESULTS}/synthetic/external/{{set}}.json",
    params:
        settings=_SYN_EXTERNAL,
    log:
        f"{LOGS}/synthetic_external/{{set}}.log",
    threads: _SYN["workers"]
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV_DATA
    script:
        "../scripts/synthetic_external.py"


rule external_labels:
    input:
        # the set's folder (a real one too: a copy that changes reruns the set)
        lambda wildcards: (
            [f"{RESULTS}/synthetic/external/{wildcards.set}"]
            if _EXT["sets"][wildcards.set] == "synthetic"
            else [_EXT["sets"][wildcards.set]]
        ),
    output:
        labels=f"{EXT_DIR}/{{set}}/labels.csv",
        rejects=f"{EXT_DIR}/{{set}}/layout_rejects.csv",
    params:
        path=lambda wildcards: (
            f"{RESULTS}/synthetic/external/{wildcards.set}"
            if _EXT["sets"][wildcards.set] == "synthetic"
            else _EXT["sets"][wildcards.set]
        ),
        split=dict(sorted(_EXT["split"].items())),
    log:
        f"{LOGS}/external_labels/{{set}}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        ENV_DATA
    script:
        "../scripts/external_labels.py"


rule external_crop:
    input:
        labels=f"{EXT_DIR}/{{set}}/labels.csv",
        rejects=f"{EXT_DIR}/{{set}}/layout_rejects.csv",
    output:
        crops=directory(f"{EXT_DIR}/{{set}}/crops"),
        manifest=f"{EXT_DIR}/{{set}}/crop_manifest.csv",
        rejects=report(
            f"{EXT_DIR}/{{set}}/rejects.csv",
            caption="../report/external_rejects.rst",
            category="External evaluation",
            subcategory="{set}",
        ),
        summary=f"{EXT_DIR}/{{set}}/summary.json",
        qc=report(
            f"{EXT_DIR}/{{set}}/qc_crops.png",
            caption="../report/external_qc.rst",
            category="External evaluation",
            subcategory="{set}",
        ),
    params:
        crop=_CROP_PARAMS,
        fov_box=_EXT["fov_box"],
        qc_images=_CROP["qc_images"],
    log:
        f"{LOGS}/external_crop/{{set}}.log",
    benchmark:
        f"{BENCH}/external_crop/{{set}}.tsv"
    threads: _CROP["workers"]
    resources:
        mem_mb=lambda wildcards, threads: 1000 + 500 * threads,
        runtime=lambda wildcards, input, threads: int(
            10 + 0.5 * csv_rows(input.labels, missing=20000) / threads / 60
        ),
    conda:
        ENV_DATA
    script:
        "../scripts/external_crop.py"


use rule crop_cache as external_cache with:
    input:
        manifest=f"{EXT_DIR}/{{set}}/crop_manifest.csv",
    output:
        npy=f"{EXT_DIR}/{{set}}/cache/crops_{{split}}.npy",
        csv=f"{EXT_DIR}/{{set}}/cache/crops_{{split}}.csv",
    log:
        f"{LOGS}/external_cache/{{set}}/{{split}}.log",
    benchmark:
        f"{BENCH}/external_cache/{{set}}/{{split}}.tsv"
    priority: 0
    threads: 1


use rule eval_fractions as external_fractions with:
    input:
        f"{EXT_DIR}/{{set}}/cache/crops_train.csv",
    output:
        f"{EXT_DIR}/{{set}}/fractions/seed{{seed}}.csv",
    params:
        fractions=[float(f) for f in _EXT["fractions"]],
    log:
        f"{LOGS}/external_fractions/{{set}}/seed{{seed}}.log",


rule external_features:
    input:
        **{
            f"{split}_{kind}": f"{EXT_DIR}/{{set}}/cache/crops_{split}.{kind}"
            for split in ("train", "val", "test")
            for kind in ("npy", "csv")
        },
        weights=lambda wildcards: eval_plan.method_weights(
            wildcards.method, _EVAL, RESULTS
        ),
    output:
        **{
            split: f"{EXT_DIR}/{{set}}/features/{{method}}/{split}.npz"
            for split in ("train", "val", "test")
        },
    wildcard_constraints:
        method=r"[A-Za-z0-9_]+",
    params:
        arch=EVAL_ARCH,
        imagenet_weights=_EVAL["imagenet_weights"],
        settings=dict(
            seed=config["seed"],
            input_size=_EVAL["input_size"],
            batch_size=_EVAL["feature_batch_size"],
            amp=_EVAL["amp"],
        ),
        device=torch_device(),
    log:
        f"{LOGS}/external_features/{{set}}/{{method}}.log",
    benchmark:
        f"{BENCH}/external_features/{{set}}/{{method}}.tsv"
    threads: max(1, min(_EVAL["workers"], 8))
    resources:
        **gpu_resources("evaluation"),
        mem_mb=8000,
        runtime=lambda wildcards, input: eval_plan.features_runtime(
            csv_rows(input.train_csv, missing=20000)
            + csv_rows(input.val_csv, missing=5000)
            + csv_rows(input.test_csv, missing=5000),
            config["device"],
        ),
    conda:
        ENV_TORCH
    script:
        "../scripts/external_features.py"


use rule eval_linear as external_linear with:
    input:
        train=f"{EXT_DIR}/{{set}}/features/{{method}}/train.npz",
        val=f"{EXT_DIR}/{{set}}/features/{{method}}/val.npz",
        test=f"{EXT_DIR}/{{set}}/features/{{method}}/test.npz",
        fractions=f"{EXT_DIR}/{{set}}/fractions/seed{{seed}}.csv",
    output:
        f"{EXT_DIR}/{{set}}/linear/{{method}}/frac{{fraction}}_seed{{seed}}.json",
    params:
        settings={
            k: _LIN[k]
            for k in ("epochs", "lr", "weight_decays", "batch_size", "class_balanced")
        },
        tensorboard=f"{LOGS}/tensorboard/external_linear/{{set}}/{{method}}/frac{{fraction}}_seed{{seed}}",
    log:
        f"{LOGS}/external_linear/{{set}}/{{method}}/frac{{fraction}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/external_linear/{{set}}/{{method}}/frac{{fraction}}_seed{{seed}}.tsv"


use rule eval_finetune as external_finetune with:
    input:
        **{
            f"{split}_{kind}": f"{EXT_DIR}/{{set}}/cache/crops_{split}.{kind}"
            for split in ("train", "val", "test")
            for kind in ("npy", "csv")
        },
        fractions=f"{EXT_DIR}/{{set}}/fractions/seed{{seed}}.csv",
        weights=lambda wildcards: eval_plan.method_weights(
            wildcards.method, _EVAL, RESULTS
        ),
    output:
        result=protected(
            f"{EXT_DIR}/{{set}}/finetune/{{method}}/frac{{fraction}}_seed{{seed}}.json"
        ),
        history=f"{EXT_DIR}/{{set}}/finetune/{{method}}/frac{{fraction}}_seed{{seed}}_history.csv",
    params:
        arch=EVAL_ARCH,
        imagenet_weights=_EVAL["imagenet_weights"],
        settings=FINETUNE_SETTINGS,
        checkpoint=f"{EXT_DIR}/{{set}}/checkpoints/finetune/{{method}}/frac{{fraction}}_seed{{seed}}.pt",
        tensorboard=f"{LOGS}/tensorboard/external_finetune/{{set}}/{{method}}/frac{{fraction}}_seed{{seed}}",
        model="",  # within a set: no model kept
        device=torch_device(),
    log:
        f"{LOGS}/external_finetune/{{set}}/{{method}}/frac{{fraction}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/external_finetune/{{set}}/{{method}}/frac{{fraction}}_seed{{seed}}.tsv"


rule external_transfer:
    input:
        eyepacs=f"{RESULTS}/eval/linear/{{method}}/frac{TRANSFER_FRACTION}_seed{{seed}}.json",
        test=f"{EXT_DIR}/{{set}}/features/{{method}}/test.npz",
    output:
        f"{EXT_DIR}/{{set}}/transfer_linear/{{method}}/seed{{seed}}.json",
    wildcard_constraints:
        method=r"[A-Za-z0-9_]+",
        seed=r"\d+",
    log:
        f"{LOGS}/external_transfer/{{set}}/{{method}}/seed{{seed}}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        ENV_TORCH
    script:
        "../scripts/external_transfer.py"


rule external_transfer_finetune:
    input:
        eyepacs=f"{RESULTS}/eval/finetune/{{method}}/frac{FINETUNE_TRANSFER_FRACTION}_seed{{seed}}.json",
        test_npy=f"{EXT_DIR}/{{set}}/cache/crops_test.npy",
        test_csv=f"{EXT_DIR}/{{set}}/cache/crops_test.csv",
    output:
        f"{EXT_DIR}/{{set}}/transfer_finetune/{{method}}/seed{{seed}}.json",
    wildcard_constraints:
        method=r"[A-Za-z0-9_]+",
        seed=r"\d+",
    params:
        device=torch_device(),
    log:
        f"{LOGS}/external_transfer_finetune/{{set}}/{{method}}/seed{{seed}}.log",
    threads: max(1, min(_EVAL["workers"], 8))
    resources:
        **gpu_resources("evaluation"),
        mem_mb=8000,
        runtime=30,
    conda:
        ENV_TORCH
    script:
        "../scripts/external_transfer_finetune.py"


rule external_table:
    input:
        **{f"results_{name}": EXTERNAL_RESULTS[name] for name in EXTERNAL_SETS},
        **{
            f"summary_{name}": f"{EXT_DIR}/{name}/summary.json"
            for name in EXTERNAL_SETS
        },
    output:
        csv=report(
            f"{RESULTS}/tables/external.csv",
            caption="../report/external_table.rst",
            category="External evaluation",
            subcategory="Table",
        ),
        md=report(
            f"{RESULTS}/tables/external.md",
            caption="../report/external_table.rst",
            category="External evaluation",
            subcategory="Table",
        ),
    params:
        sets=EXTERNAL_SETS,
        methods=EVAL_METHODS,
        fractions=[float(f) for f in _EXT["fractions"]],
        transfer_fraction=float(TRANSFER_FRACTION),
        finetune_transfer_fraction=float(FINETUNE_TRANSFER_FRACTION),
    log:
        f"{LOGS}/external_table/external_table.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        ENV_DATA
    script:
        "../scripts/external_table.py"
