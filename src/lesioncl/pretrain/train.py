"""The contrastive pretraining trainer (lesion windows or whole images), resumable, DDP-ready.

One plain training loop (torchvision-references style):

* data: uint8 views from the crop cache (:mod:`.data`), augmented per batch on the
  training device (:mod:`.augment`); every random draw is a function of
  ``(seed, epoch, step)`` so runs are reproducible and a resumed run continues
  exactly as if it had never stopped;
* model: ResNet + projection head (:mod:`.builder`), channels_last, bf16 autocast on
  GPU (``amp``), optional ``torch.compile``;
* loss: SupCon in SimCLR mode over the **global** batch; under DDP the embeddings are
  all-gathered with gradients (:func:`.loss.gather_with_grad`) so the update equals the
  single-process one (BatchNorm statistics stay per GPU unless ``sync_bn``);
* optimiser: SGD (momentum, Nesterov, weight decay), per-step cosine schedule to 0
  with an optional linear warm-up;
* validation loss every ``val_every`` epochs (fixed views, so epochs are comparable);
* logs: TensorBoard (``tb/``: loss, lr, pairs/s, view grids), progress
  (lesioncl.progress), the text log, ``history.csv``;
* checkpoints: ``checkpoints/last.pt`` every ``checkpoint_every`` epochs and when the
  job receives SIGTERM/SIGUSR1 (SLURM preemption or time limit, Snakemake stopping
  it; the checkpoint is then taken mid-epoch at the current step), written
  atomically and read with ``weights_only=True``. If it exists when training starts
  and was written for the same hyper-parameters and data, training resumes from it
  (model, optimiser, scheduler, RNG states, sampler position, history). It is
  deliberately *not* a Snakemake output: Snakemake deletes the outputs of an
  incomplete job before rerunning it. It is removed once the run has finished and
  ``final.pt`` (the same content) is written.

Multi-GPU: run under ``torchrun`` (:func:`launch` starts it when ``gpus > 1``); the
global batch is split evenly over the ranks.

The parts: :mod:`.config` (:class:`PretrainConfig`), :mod:`.distributed` (the process
group), :mod:`.schedule` (learning rate, optimiser, augmentation seeds),
:mod:`.trainer` (the engine) and :mod:`.records` (its logs, checkpoints, outputs and
signals). This module starts a run: in this process, or on ``gpus`` GPUs with torchrun.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch.distributed as dist

from lesioncl.pretrain.config import PretrainConfig
from lesioncl.pretrain.trainer import Trainer
from lesioncl.utils import atomic_path, setup_logging

log = logging.getLogger("lesioncl.pretrain.train")


# --------------------------------------------------------------------------- entry points
def run_pretraining(
    cfg: PretrainConfig, callbacks: Sequence[Callable[[Trainer, int], None]] = ()
) -> list[dict]:
    """Train (resuming when possible) and write the outputs; tears down a group it created."""
    trainer = Trainer(cfg, callbacks)
    try:
        return trainer.fit()
    finally:
        if trainer.dist.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def launch(cfg: PretrainConfig, gpus: int = 1, log_file: str | os.PathLike | None = None) -> None:
    """Run in this process (``gpus <= 1``) or under ``torchrun --nproc_per_node=gpus``.

    The torchrun workers run :func:`main` with the configuration written beside the
    outputs; rank 0 appends to ``log_file``. torchrun's ``--standalone`` rendezvous
    needs no free-port setup (single node).
    """
    if gpus <= 1:
        run_pretraining(cfg)
        return
    config_path = Path(cfg.out_dir) / "launch_config.json"
    with atomic_path(config_path) as tmp:
        tmp.write_text(json.dumps(cfg.to_dict(), indent=2))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={gpus}",
        "-m",
        "lesioncl.pretrain.train",
        "--config",
        str(config_path),
    ]
    if log_file:
        cmd += ["--logfile", str(log_file)]
    log.info("launching %d DDP workers: %s", gpus, " ".join(cmd))
    for handler in logging.getLogger().handlers:
        handler.flush()
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise RuntimeError(
            f"torchrun pretraining failed with exit code {result.returncode}; see {log_file}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    """A torchrun worker: ``python -m lesioncl.pretrain.train --config run.json [--logfile f]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON of PretrainConfig fields")
    parser.add_argument("--logfile", help="text log (rank 0 appends to it)")
    args = parser.parse_args(argv)
    setup_logging(None)
    if args.logfile and int(os.environ.get("RANK", "0")) == 0:
        handler = logging.FileHandler(args.logfile, mode="a")
        handler.setFormatter(logging.getLogger().handlers[0].formatter)
        logging.getLogger().addHandler(handler)
    cfg = PretrainConfig.from_dict(json.loads(Path(args.config).read_text()))
    run_pretraining(cfg)


if __name__ == "__main__":
    main()
