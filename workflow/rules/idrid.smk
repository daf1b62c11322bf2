# IDRiD ingestion: the official "A. Segmentation" zip or folder -> lesion boxes
# (one per 8-connected mask component) -> COCO detection json + images.
from lesioncl.idrid import source_path as idrid_source_path


rule idrid_coco:
    input:
        idrid_source_path(config["idrid"], RESULTS),
    output:
        train=f"{RESULTS}/idrid/coco_train.json",
        test=f"{RESULTS}/idrid/coco_test.json",
        images=directory(f"{RESULTS}/idrid/images"),
        summary=f"{RESULTS}/idrid/summary.json",
        qc=report(
            f"{RESULTS}/idrid/qc_boxes.png",
            caption="../report/idrid_qc_boxes.rst",
            category="IDRiD lesion boxes",
        ),
    params:
        settings={
            k: config["idrid"][k]
            for k in ("mask_threshold", "max_size", "min_box_size", "qc_images")
        },
    log:
        f"{LOGS}/idrid_coco/idrid_coco.log",
    benchmark:
        f"{BENCH}/idrid_coco/idrid_coco.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        ENV_DATA
    script:
        "../scripts/idrid_coco.py"
