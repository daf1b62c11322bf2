# The lesion detector (docs/method.md "Lesion boxes and detector"): Faster R-CNN + FPN with
# MMDetection 3.x, its config generated in Python from config["detector"]. Trains on
# results/idrid/coco_train.json (detector.datasets [idrid], the paper) or on the joined
# sources (results/detector/data/), publishes a plain state_dict + the mmdet config, and
# evaluates the published model on the test set(s) (COCO bbox metrics), then on each
# source's own splits (detector_eval).
#
# Resume: mmengine trains in results/detector/checkpoints/ and saves its state there
# after every epoch. It is not a declared output on purpose (Snakemake deletes the
# outputs of a failed job); a rerun after a time limit continues from the last epoch
# when the settings and data are unchanged, and the job removes it after success.
from lesioncl.detector.sources import check_datasets, source_files


_DET = config["detector"]
DETECTOR_SOURCES = check_datasets(_DET["datasets"])
# IDRiD alone: the detector reads results/idrid/ as it always did (a detector trained
# before detector.datasets existed keeps its inputs); otherwise the joined sources.
_DET_DATA = (
    f"{RESULTS}/idrid" if DETECTOR_SOURCES == ["idrid"] else f"{RESULTS}/detector/data"
)


# The sources' training and test splits joined (images hard-linked), when the detector
# trains on more than IDRiD.
rule detector_data:
    input:
        **source_files(RESULTS, DETECTOR_SOURCES, ("train", "test")),
    output:
        train=f"{RESULTS}/detector/data/coco_train.json",
        test=f"{RESULTS}/detector/data/coco_test.json",
        images=directory(f"{RESULTS}/detector/data/images"),
    params:
        sources=DETECTOR_SOURCES,
    log:
        f"{LOGS}/detector_data/detector_data.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    conda:
        ENV_TORCH  # lesioncl.detector imports torch and mmdet
    script:
        "../scripts/detector_data.py"


rule detector_train:
    input:
        train=f"{_DET_DATA}/coco_train.json",
        test=f"{_DET_DATA}/coco_test.json",
        images=f"{_DET_DATA}/images",
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
        # detector_qc; workers is operational (the script reads it: no rerun); datasets
        # decides the inputs (their files, not a parameter)
        detector={
            k: v
            for k, v in sorted(_DET.items())
            if k not in ("qc_images", "workers", "datasets")
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
        test=f"{_DET_DATA}/coco_test.json",
        images=f"{_DET_DATA}/images",
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


# The published detector measured on each of its sources' own splits (IDRiD test; DDR
# valid and test): COCO bbox metrics per source and class.
rule detector_eval:
    input:
        **source_files(RESULTS, DETECTOR_SOURCES, ("val", "test")),
        model=rules.detector_train.output.model,
        config=rules.detector_train.output.config,
    output:
        json=f"{RESULTS}/detector/metrics_by_source.json",
        md=report(
            f"{RESULTS}/detector/metrics_by_source.md",
            caption="../report/detector_sources.rst",
            category="Lesion detector",
        ),
    params:
        sources=DETECTOR_SOURCES,
        device=torch_device(),
    log:
        f"{LOGS}/detector_eval/detector_eval.log",
    benchmark:
        f"{BENCH}/detector_eval/detector_eval.tsv"
    threads: 2
    resources:
        **gpu_resources("detector"),
        mem_mb=6000,
        runtime=60,
    conda:
        ENV_TORCH
    script:
        "../scripts/detector_eval.py"
