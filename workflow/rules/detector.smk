# The IDRiD lesion detector (docs/method.md "Lesion boxes and detector"): Faster R-CNN + FPN with
# MMDetection 3.x, its config generated in Python from config["detector"]. Trains on
# results/idrid/coco_train.json, publishes a plain state_dict + the mmdet config, and
# evaluates the published model on the testing set (COCO bbox metrics).
#
# Resume: mmengine trains in results/detector/checkpoints/ and saves its state there
# after every epoch. It is not a declared output on purpose (Snakemake deletes the
# outputs of a failed job); a rerun after a time limit continues from the last epoch
# when the settings and data are unchanged, and the job removes it after success.

_DET = config["detector"]


rule detector_train:
    input:
        train=f"{RESULTS}/idrid/coco_train.json",
        test=f"{RESULTS}/idrid/coco_test.json",
        images=f"{RESULTS}/idrid/images",
    output:
        model=protected(f"{RESULTS}/detector/model.pth"),  # hours on a GPU: README
        config=f"{RESULTS}/detector/mmdet_config.py",
        metrics=report(
            f"{RESULTS}/detector/metrics.json",
            caption="../report/detector_metrics.rst",
            category="Lesion detector",
        ),
        curves=report(
            f"{RESULTS}/detector/training_curves.png",
            caption="../report/detector_curves.rst",
            category="Lesion detector",
        ),
        work=directory(f"{RESULTS}/detector/work"),
    params:
        # key order of the config file does not matter; qc_images only concerns
        # detector_qc; workers is operational (the script reads it: no rerun)
        detector={
            k: v for k, v in sorted(_DET.items()) if k not in ("qc_images", "workers")
        },
        seed=config["seed"],
        device=torch_device(),
    log:
        f"{LOGS}/detector_train/detector_train.log",
    benchmark:
        f"{BENCH}/detector_train/detector_train.tsv"
    priority: PATH_TO_PRETRAINING
    threads: _DET["workers"] + 2  # torch threads of the training process + loader workers
    resources:
        **gpu_resources("detector"),
        mem_mb=8000,
        # minutes: ~2 per epoch on CPU for the demo, generous for a GPU run
        runtime=lambda wildcards, attempt: int(30 + 3 * _DET["epochs"]) * attempt,
    conda:
        ENV_TORCH
    script:
        "../scripts/detector_train.py"


# QC picture: the published detector's boxes beside the ground truth on IDRiD testing
# images, at the lesion index's score threshold. A few images: it runs on the CPU.
rule detector_qc:
    input:
        model=rules.detector_train.output.model,
        config=rules.detector_train.output.config,
        test=f"{RESULTS}/idrid/coco_test.json",
        images=f"{RESULTS}/idrid/images",
    output:
        report(
            f"{RESULTS}/detector/qc_test.png",
            caption="../report/detector_qc.rst",
            category="Lesion detector",
        ),
    params:
        settings=dict(
            n_images=_DET["qc_images"],
            score_threshold=config["lesion_index"]["score_threshold"],
        ),
        device="cpu",
    log:
        f"{LOGS}/detector_qc/detector_qc.log",
    threads: 2
    resources:
        mem_mb=6000,
        runtime=30,
    conda:
        ENV_TORCH
    script:
        "../scripts/detector_qc.py"
