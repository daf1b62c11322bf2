"""Rule external_crop: a graded set's images -> crops, manifest, rejects, QC picture."""

from lesioncl.adapter import run
from lesioncl.crop import CropParams
from lesioncl.external.crop import crop_external


def main(job):
    crop_external(
        job.wildcards.set,
        labels_csv=job.input.labels,
        layout_rejects_csv=job.input.rejects,
        crops_dir=job.output.crops,
        manifest_out=job.output.manifest,
        rejects_out=job.output.rejects,
        summary_out=job.output.summary,
        qc_out=job.output.qc,
        params=job.settings(CropParams, "crop"),
        workers=job.threads,
        qc_images=job.params.qc_images,
        fov_box=job.params.fov_box,
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
