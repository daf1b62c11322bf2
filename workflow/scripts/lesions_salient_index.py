"""Rule lesions_salient_index: the salient-window control of the detector's lesion index."""

from lesioncl.adapter import run
from lesioncl.lesions.controls import SalientIndexSettings
from lesioncl.lesions.sources import build_salient_index


def main(job):
    build_salient_index(
        job.input.index,
        job.input.train_npy,
        job.input.val_npy,
        out_pkl=job.output.pkl,
        out_json=job.output.json,
        settings=job.settings(SalientIndexSettings, "settings"),
    )


run(snakemake, main)  # noqa: F821 - injected by Snakemake
