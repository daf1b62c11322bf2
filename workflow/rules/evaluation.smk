# DR-grading evaluation (docs/method.md "Evaluation"): every compared initialisation
# (wildcard `method`) is evaluated by a linear classifier on its frozen features
# and by the authors' fine-tuning recipe, on nested stratified label fractions of
# the training set; selection on val (Usage=Public), kappa on test (Usage=Private).
#   eval_fractions  results/cache/crops_train.csv -> results/eval/fractions/seed{seed}.csv
#   eval_features   backbone + cache -> results/eval/features/{method}/{split}.npz
#   eval_linear     features + fractions -> results/eval/linear/{method}/frac{fraction}_seed{seed}.json
#   eval_finetune   backbone + cache + fractions -> results/eval/finetune/{method}/frac{fraction}_seed{seed}.json
# What runs (methods, their weights, runtimes) comes from lesioncl.evaluation.plan.
from lesioncl.evaluation import plan as eval_plan
from lesioncl.evaluation.fractions import fraction_tag

_EVAL = config["evaluation"]
_LIN = _EVAL["linear"]
_FT = _EVAL["finetune"]
EVAL_ARCH = config["pretrain"]["arch"]
EVAL_FRACTIONS = [fraction_tag(f) for f in _EVAL["fractions"]]
EVAL_SEEDS = list(_EVAL["seeds"])
FINETUNE_SEEDS = list(_FT["seeds"] or _EVAL["seeds"])
FINETUNE_FRACTIONS = eval_plan.finetune_fractions(_EVAL)  # null: all of EVAL_FRACTIONS
FRACTIONS_OF = {"linear": EVAL_FRACTIONS, "finetune": FINETUNE_FRACTIONS}
EVAL_METHODS = eval_plan.methods(_EVAL)
# Window-source controls (evaluation.controls): made by the target `controls`; the table
# and the report include those whose results all exist (REPORT_METHODS).
CONTROL_METHODS = eval_plan.controls(_EVAL)
EVALUATIONS = ["linear"] + (["finetune"] if _FT["enabled"] else [])
eval_plan.check_methods(
    EVAL_METHODS, _EVAL["extra_weights"], config["pretrain"]["simclr_sizes"]
)
eval_plan.check_sources(EVAL_METHODS + CONTROL_METHODS, config["eyepacs"]["source"])
# Every run JSON of one evaluation (methods x fractions x seeds), [] when it is off: of the
# controls, and of what the table and the report show (the methods and present controls).
SEEDS_OF = {"linear": EVAL_SEEDS, "finetune": FINETUNE_SEEDS}
CONTROL_RESULTS = eval_plan.result_files(
    RESULTS, CONTROL_METHODS, EVALUATIONS, FRACTIONS_OF, SEEDS_OF
)
REPORT_METHODS = EVAL_METHODS + eval_plan.present(
    CONTROL_METHODS,
    lambda m: sum(
        eval_plan.result_files(
            RESULTS, [m], EVALUATIONS, FRACTIONS_OF, SEEDS_OF
        ).values(),
        [],
    ),
)
REPORT_RESULTS = eval_plan.result_files(
    RESULTS, REPORT_METHODS, EVALUATIONS, FRACTIONS_OF, SEEDS_OF
)


# The fine-tuning recipe's settings (FinetuneSettings), on EyePACS and the external sets.
FINETUNE_SETTINGS = dict(
    epochs=_FT["epochs"],
    min_steps_per_epoch=_FT["min_steps_per_epoch"],
    batch_size=_FT["batch_size"],
    lr=_FT["lr"],
    momentum=_FT["momentum"],
    nesterov=_FT["nesterov"],
    weight_decay=_FT["weight_decay"],
    input_size=_EVAL["input_size"],
    eval_batch_size=_EVAL["feature_batch_size"],
    tune_thresholds=_FT["tune_thresholds"],
    amp=_EVAL["amp"],
)


rule eval_fractions:
    input:
        f"{RESULTS}/cache/crops_train.csv",
    output:
        f"{RESULTS}/eval/fractions/seed{{seed}}.csv",
    wildcard_constraints:
        seed=r"\d+",
    params:
        fractions=[float(f) for f in _EVAL["fractions"]],
    log:
        f"{LOGS}/eval_fractions/seed{{seed}}.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    conda:
        ENV_DATA
    script:
        "../scripts/eval_fractions.py"


rule eval_features:
    input:
        npy=f"{RESULTS}/cache/crops_{{split}}.npy",
        csv=f"{RESULTS}/cache/crops_{{split}}.csv",
        weights=lambda wildcards: eval_plan.method_weights(
            wildcards.method, _EVAL, RESULTS
        ),
    output:
        f"{RESULTS}/eval/features/{{method}}/{{split}}.npz",
    wildcard_constraints:
        method=r"[A-Za-z0-9_]+",
        split=r"train|val|test",
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
        f"{LOGS}/eval_features/{{method}}/{{split}}.log",
    benchmark:
        f"{BENCH}/eval_features/{{method}}/{{split}}.tsv"
    threads: max(1, min(_EVAL["workers"], 8))
    resources:
        **gpu_resources("evaluation"),
        mem_mb=8000,
        runtime=lambda wildcards, input: eval_plan.features_runtime(
            csv_rows(input.csv, missing=50000), config["device"]
        ),
    conda:
        ENV_TORCH
    script:
        "../scripts/eval_features.py"


rule eval_linear:
    input:
        train=f"{RESULTS}/eval/features/{{method}}/train.npz",
        val=f"{RESULTS}/eval/features/{{method}}/val.npz",
        test=f"{RESULTS}/eval/features/{{method}}/test.npz",
        fractions=f"{RESULTS}/eval/fractions/seed{{seed}}.csv",
    output:
        f"{RESULTS}/eval/linear/{{method}}/frac{{fraction}}_seed{{seed}}.json",
    wildcard_constraints:
        method=r"[A-Za-z0-9_]+",
        fraction=r"[0-9.]+",
        seed=r"\d+",
    params:
        settings={
            k: _LIN[k]
            for k in ("epochs", "lr", "weight_decays", "batch_size", "class_balanced")
        },
        tensorboard=f"{LOGS}/tensorboard/eval_linear/{{method}}/frac{{fraction}}_seed{{seed}}",
    log:
        f"{LOGS}/eval_linear/{{method}}/frac{{fraction}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/eval_linear/{{method}}/frac{{fraction}}_seed{{seed}}.tsv"
    # a small model on cached features: one core (two jobs run side by side on two; most
    # of a job is starting Python and torch)
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        ENV_TORCH
    script:
        "../scripts/eval_linear.py"


rule eval_finetune:
    input:
        **CROP_CACHE["train"],
        **CROP_CACHE["val"],
        **CROP_CACHE["test"],
        fractions=f"{RESULTS}/eval/fractions/seed{{seed}}.csv",
        weights=lambda wildcards: eval_plan.method_weights(
            wildcards.method, _EVAL, RESULTS
        ),
    output:
        result=protected(
            f"{RESULTS}/eval/finetune/{{method}}/frac{{fraction}}_seed{{seed}}.json"
        ),
        history=f"{RESULTS}/eval/finetune/{{method}}/frac{{fraction}}_seed{{seed}}_history.csv",
    wildcard_constraints:
        method=r"[A-Za-z0-9_]+",
        fraction=r"[0-9.]+",
        seed=r"\d+",
    params:
        arch=EVAL_ARCH,
        imagenet_weights=_EVAL["imagenet_weights"],
        settings=FINETUNE_SETTINGS,
        # Resume state, deliberately not an output (Snakemake deletes the outputs of
        # failed jobs); removed by the job after success.
        checkpoint=f"{RESULTS}/eval/checkpoints/finetune/{{method}}/frac{{fraction}}_seed{{seed}}.pt",
        tensorboard=f"{LOGS}/tensorboard/eval_finetune/{{method}}/frac{{fraction}}_seed{{seed}}",
        # the fine-tuned grader is kept (read-only) at the largest label fraction: the
        # external sets are graded with it (external_transfer_finetune)
        model=lambda wildcards: eval_plan.finetune_model_path(
            RESULTS, wildcards, FINETUNE_FRACTIONS
        ),
        device=torch_device(),
    log:
        f"{LOGS}/eval_finetune/{{method}}/frac{{fraction}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/eval_finetune/{{method}}/frac{{fraction}}_seed{{seed}}.tsv"
    threads: max(1, min(_EVAL["workers"], 8))
    resources:
        **gpu_resources("evaluation"),
        mem_mb=16000,
        runtime=lambda wildcards, input: eval_plan.finetune_runtime(
            wildcards.fraction,
            csv_rows(input.train_csv, missing=50000),
            csv_rows(input.val_csv, missing=50000),
            csv_rows(input.test_csv, missing=50000),
            _FT,
            config["device"],
        ),
    conda:
        ENV_TORCH
    script:
        "../scripts/eval_finetune.py"


# The window-source controls (evaluation.controls): `snakemake controls`, then the default
# target, whose kappa table and report then include them (make controls does both).
rule controls:
    input:
        CONTROL_RESULTS["linear"],
        CONTROL_RESULTS["finetune"],
