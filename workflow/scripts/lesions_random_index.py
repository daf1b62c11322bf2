"""Rule lesions_random_index: the random-window control of the detector's lesion index."""

from lesioncl.adapter import run
from lesioncl.lesions.controls import RandomIndexSettings
from lesioncl.lesions.sources import build_random_index


def main(job):
    build_random_index(
        job.input.index,
        job.input.train_npy,
        job.input.val_npy,
        out_pkl=job.output.pkl,
        out_json=job.output.json,
        settings=job.settings(RandomIndexSettings, "settings"),
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
