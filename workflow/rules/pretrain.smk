# Contrastive pretraining (docs/method.md "Lesion-based contrastive pretraining").
#   pretrain_lesion   cache + lesion index -> results/pretrain/lesion_cl/ (the paper); the
#                     same on the index's random-window control -> lesion_cl_random/, its
#                     salient-window control -> lesion_cl_salient/ and, on synthetic
#                     data, on the generator's true boxes -> lesion_cl_truth/
#   pretrain_simclr   cache -> results/pretrain/simclr_{size}/ (whole-image baseline)
# Outputs per method: backbone.pth (torchvision state_dict without fc), final.pt (full
# training state), history.csv and loss_curve.png. TensorBoard logs: tb/.
#
# Resume: the trainer writes results/pretrain/{method}/checkpoints/last.pt every
# pretrain.checkpoint_every epochs and on SIGTERM/SIGUSR1 (SLURM preemption or time
# limit, Ctrl-C of Snakemake). It is not a declared output on purpose: Snakemake deletes
# the outputs of an incomplete job before rerunning it. Rerunning the job (the default
# profile sets rerun-incomplete) continues from that checkpoint when the
# hyper-parameters and the data are unchanged; it is removed once final.pt is written.
#
# Multi-GPU: pretrain.gpus > 1 requests that many GPUs (gpu_resources) and the script
# starts `torchrun --standalone --nproc_per_node=<gpus>` on the node; the global batch
# (batch_size) is split evenly over the GPUs and the loss is computed over all of it.

import os

from lesioncl.evaluation.plan import LESION_METHODS

_PT = config["pretrain"]

if len(_PT["simclr_sizes"]) != len(_PT["simclr_batch_sizes"]):
    raise ValueError(
        "config: pretrain.simclr_sizes and pretrain.simclr_batch_sizes must have the "
        f"same length (got {_PT['simclr_sizes']} and {_PT['simclr_batch_sizes']})"
    )

# Everything that changes what training computes (operational settings such as
# workers, checkpoint_every and compile are read from the config by the script, so
# changing them does not rerun training).
_PT_PARAMS = {
    k: _PT[k]
    for k in [
        "arch",
        "init",
        "weights",
        "epochs",
        "optimizer",
        "lr",
        "momentum",
        "nesterov",
        "weight_decay",
        "warmup_epochs",
        "view_warmup_epochs",
        "box_margin",
        "samples_per_epoch",
        "temperature",
        "proj_hidden",
        "proj_dim",
        "val_every",
        "amp",
        "sync_bn",
        "gpus",
    ]
}


# pretrain.seed: another pretraining seed without regenerating the data (null: the workflow's)
PRETRAIN_SEED = config["seed"] if _PT.get("seed") is None else _PT["seed"]


# The lesion index each lesion-based method pretrains on (its window source).
LESION_SOURCES = dict(
    zip(
        LESION_METHODS,
        [
            f"{RESULTS}/lesions/lesion_index.pkl",
            f"{RESULTS}/lesions/random/lesion_index.pkl",
            f"{RESULTS}/lesions/truth/lesion_index.pkl",
            f"{RESULTS}/lesions/salient/lesion_index.pkl",
        ],
    )
)

# A weights file the backbone starts from (init: path, or imagenet from a file).
_PT_WEIGHTS = (
    [_PT["weights"]] if _PT["weights"] and _PT["init"] in ("path", "imagenet") else []
)
# Batch size of each SimCLR baseline; only configured sizes match the wildcard
# (evaluation.smk reports a requested simclr_<size> that is not configured).
_SIMCLR_BATCH = dict(
    zip((int(s) for s in _PT["simclr_sizes"]), _PT["simclr_batch_sizes"])
)


rule pretrain_lesion:
    input:
        **CROP_CACHE["train"],
        **CROP_CACHE["val"],
        index=lambda wildcards: LESION_SOURCES[wildcards.method],
        weights=_PT_WEIGHTS,
    output:
        backbone=protected(f"{RESULTS}/pretrain/{{method}}/backbone.pth"),
        final=protected(f"{RESULTS}/pretrain/{{method}}/final.pt"),
        history=report(
            f"{RESULTS}/pretrain/{{method}}/history.csv",
            caption="../report/pretrain_history.rst",
            category="Pretraining",
            subcategory="{method}",
        ),
        curve=report(
            f"{RESULTS}/pretrain/{{method}}/loss_curve.png",
            caption="../report/pretrain_curve.rst",
            category="Pretraining",
            subcategory="{method}",
        ),
    wildcard_constraints:
        method="|".join(LESION_SOURCES),
    params:
        mode="lesion",
        out_dir=lambda wildcards, output: os.path.dirname(output.backbone),
        view_size=_PT["patch_size"],
        batch_size=_PT["batch_size"],
        train=_PT_PARAMS,
        seed=PRETRAIN_SEED,
        device=torch_device(),
    log:
        f"{LOGS}/pretrain/{{method}}.log",
    benchmark:
        f"{BENCH}/pretrain/{{method}}.tsv"
    priority: PATH_TO_PRETRAINING
    threads: _PT["workers"] * _PT["gpus"] + 1
    resources:
        **gpu_resources("pretrain"),
        mem_mb=_PT["mem_mb"],
        runtime=_PT["runtime"],
    conda:
        ENV_TORCH
    script:
        "../scripts/pretrain_train.py"


rule pretrain_simclr:
    input:
        **CROP_CACHE["train"],
        **CROP_CACHE["val"],
        weights=_PT_WEIGHTS,
    output:
        backbone=protected(f"{RESULTS}/pretrain/simclr_{{size}}/backbone.pth"),
        final=protected(f"{RESULTS}/pretrain/simclr_{{size}}/final.pt"),
        history=report(
            f"{RESULTS}/pretrain/simclr_{{size}}/history.csv",
            caption="../report/pretrain_history.rst",
            category="Pretraining",
            subcategory="simclr_{size}",
        ),
        curve=report(
            f"{RESULTS}/pretrain/simclr_{{size}}/loss_curve.png",
            caption="../report/pretrain_curve.rst",
            category="Pretraining",
            subcategory="simclr_{size}",
        ),
    wildcard_constraints:
        size="|".join(str(s) for s in _SIMCLR_BATCH),
    params:
        mode="whole",
        out_dir=lambda wildcards, output: os.path.dirname(output.backbone),
        view_size=lambda wildcards: int(wildcards.size),
        batch_size=lambda wildcards: _SIMCLR_BATCH[int(wildcards.size)],
        train=_PT_PARAMS,
        seed=PRETRAIN_SEED,
        device=torch_device(),
    log:
        f"{LOGS}/pretrain/simclr_{{size}}.log",
    benchmark:
        f"{BENCH}/pretrain/simclr_{{size}}.tsv"
    priority: PATH_TO_PRETRAINING
    threads: _PT["workers"] * _PT["gpus"] + 1
    resources:
        **gpu_resources("pretrain"),
        mem_mb=_PT["mem_mb"],
        runtime=_PT["runtime"],
    conda:
        ENV_TORCH
    script:
        "../scripts/pretrain_train.py"


rule pretrain_all:
    input:
        f"{RESULTS}/pretrain/lesion_cl/backbone.pth",
        [
            f"{RESULTS}/pretrain/{m}/backbone.pth"
            for m in config["evaluation"]["methods"]
            if m in LESION_SOURCES and m != "lesion_cl"
        ],
        expand(
            f"{RESULTS}/pretrain/simclr_{{size}}/backbone.pth",
            size=_PT["simclr_sizes"],
        ),
