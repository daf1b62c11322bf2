"""Snakemake adapter of rules pretrain_lesion / pretrain_simclr.

Hyper-parameters come from snakemake.params (they trigger reruns); operational settings
(DataLoader workers, checkpoint interval, torch.compile, channels_last) from the config.
With pretrain.gpus > 1 the package starts torchrun on this node.
"""

from pathlib import Path

import torch

from lesioncl.pretrain.train import PretrainConfig, launch
from lesioncl.utils import setup_logging

smk = snakemake  # noqa: F821 - injected by Snakemake
log = setup_logging(smk.log[0])
torch.set_num_threads(smk.threads)  # CPU training: the rule's cores, not the machine's
try:
    hp = dict(smk.params.train)
    gpus = int(hp.pop("gpus"))
    run = smk.config["pretrain"]
    cfg = PretrainConfig(
        mode=smk.params.mode,
        train_cache=smk.input.train_npy,
        val_cache=smk.input.val_npy,
        lesion_index=smk.input.get("index"),
        out_dir=smk.params.out_dir,
        view_size=smk.params.view_size,
        batch_size=smk.params.batch_size,
        seed=smk.params.seed,
        device=smk.params.device,
        workers=run["workers"],
        checkpoint_every=run["checkpoint_every"],
        compile=run["compile"],
        channels_last=run["channels_last"],
        probe_size=smk.config["evaluation"]["input_size"] if run["knn_probe"] else 0,
        probe_k=run["knn_k"],
        probe_max_train=run["knn_max_train"],
        **hp,
    )
    expected = {k: Path(v) for k, v in cfg.outputs().items() if k in smk.output.keys()}
    for key, path in expected.items():
        if Path(smk.output[key]) != path:
            raise ValueError(f"rule output {key} = {smk.output[key]} but the trainer writes {path}")
    launch(cfg, gpus=gpus, log_file=smk.log[0])
except Exception:
    log.exception("pretraining failed")
    raise
