"""Rule lesions_quality: the lesion index and its random control against the generator's boxes."""

from lesioncl.adapter import run
from lesioncl.lesions.sources import QualitySettings, write_index_quality


def main(job):
    write_index_quality(
        job.input.index,
        job.input.random,
        job.input.lesions,
        job.input.manifest,
        job.input.train_npy,
        job.input.val_npy,
        out_json=job.output.json,
        out_png=job.output.plot,
        settings=job.settings(QualitySettings, "settings"),
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
