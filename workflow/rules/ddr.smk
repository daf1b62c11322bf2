# DDR's lesion annotations (config ddr; used when detector.datasets names ddr): its
# masks (or its VOC boxes) -> lesion boxes -> COCO json + images, one file per split
# (DDR's valid is val). Images without any lesion are listed in rejects.csv.
from lesioncl.ddr import source_path as ddr_source_path


rule ddr_coco:
    input:
        ddr_source_path(config["ddr"], RESULTS),
    output:
        train=f"{RESULTS}/ddr/coco_train.json",
        val=f"{RESULTS}/ddr/coco_val.json",
        test=f"{RESULTS}/ddr/coco_test.json",
        images=directory(f"{RESULTS}/ddr/images"),
        summary=f"{RESULTS}/ddr/summary.json",
        rejects=f"{RESULTS}/ddr/rejects.csv",
        qc=report(
            f"{RESULTS}/ddr/qc_boxes.png",
            caption="../report/ddr_qc_boxes.rst",
            category="DDR lesion boxes",
        ),
    params:
        settings={
            k: config["ddr"][k]
            for k in (
                "annotations",
                "mask_threshold",
                "max_size",
                "min_box_size",
                "qc_images",
            )
        },
    log:
        f"{LOGS}/ddr_coco/ddr_coco.log",
    benchmark:
        f"{BENCH}/ddr_coco/ddr_coco.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        ENV_DATA
    script:
        "../scripts/ddr_coco.py"
