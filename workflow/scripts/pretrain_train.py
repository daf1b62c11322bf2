"""Rules pretrain_lesion / pretrain_simclr: one contrastive pretraining run.

Hyper-parameters come from params (they trigger reruns); operational settings
(DataLoader workers, checkpoint interval, torch.compile, channels_last, the kNN probe)
through ``job.operational`` (they do not). With pretrain.gpus > 1 the package starts
torchrun on this node; each rank resolves the device itself.
"""

from pathlib import Path

from lesioncl.adapter import run
from lesioncl.pretrain.train import PretrainConfig, launch


def main(job):
    hp = dict(job.params.train)
    gpus = int(hp.pop("gpus"))
    ops = job.operational(
        "pretrain",
        "workers",
        "checkpoint_every",
        "compile",
        "channels_last",
        "knn_probe",
        "knn_k",
        "knn_max_train",
    )
    cfg = PretrainConfig(
        mode=job.params.mode,
        train_cache=job.input.train_npy,
        val_cache=job.input.val_npy,
        lesion_index=job.optional_input("index"),
        out_dir=job.params.out_dir,
        view_size=job.params.view_size,
        batch_size=job.params.batch_size,
        seed=job.params.seed,
        device=job.params.device,
        workers=ops["workers"],
        checkpoint_every=ops["checkpoint_every"],
        compile=ops["compile"],
        channels_last=ops["channels_last"],
        probe_size=job.operational("evaluation", "input_size")["input_size"]
        if ops["knn_probe"]
        else 0,
        probe_k=ops["knn_k"],
        probe_max_train=ops["knn_max_train"],
        **hp,
    )
    expected = {k: Path(v) for k, v in cfg.outputs().items() if k in job.output.keys()}
    for key, path in expected.items():
        if Path(job.output[key]) != path:
            raise ValueError(f"rule output {key} = {job.output[key]} but the trainer writes {path}")
    launch(cfg, gpus=gpus, log_file=job.log[0])


run(snakemake, main, torch_threads=True)  # noqa: F821 - injected by Snakemake
