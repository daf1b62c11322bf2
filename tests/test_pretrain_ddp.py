"""Two-process DDP on CPU (gloo): the gathered loss and its gradients equal the
single-process ones, and a torchrun-launched training run finishes."""

from __future__ import annotations

import socket

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from lesioncl.pretrain.builder import ContrastiveModel
from lesioncl.pretrain.loss import SupConLoss
from lesioncl.pretrain.toydata import write_toy_cache
from lesioncl.pretrain.train import PretrainConfig, launch

WORLD, LOCAL = 2, 4  # ranks, samples per rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model() -> ContrastiveModel:
    torch.manual_seed(0)
    return ContrastiveModel("resnet18", "random", None, proj_hidden=32, proj_dim=16)


def _global_batch() -> torch.Tensor:
    return torch.randn(WORLD * LOCAL, 2, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _ddp_worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        model = _model()
        ddp = DistributedDataParallel(model)
        views = _global_batch()[rank * LOCAL : (rank + 1) * LOCAL]  # this rank's samples
        z = ddp(views.flatten(0, 1)).view(LOCAL, 2, -1)
        loss = SupConLoss(0.07).global_loss(z)
        loss.backward()  # DDP averages the gradients over the ranks
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        if rank == 0:
            grads = {k: p.grad.clone() for k, p in model.named_parameters()}
            torch.save({"loss": mean / WORLD, "grads": grads}, out)
    finally:
        dist.destroy_process_group()


def test_ddp_loss_and_gradients_equal_the_single_process_ones(tmp_path):
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    ddp = torch.load(out, weights_only=True)

    # single process, the same global batch; BatchNorm statistics per rank-sized chunk
    model = _model()
    batch = _global_batch()
    z = torch.cat([model(batch[r * LOCAL : (r + 1) * LOCAL].flatten(0, 1)) for r in range(WORLD)])
    loss = SupConLoss(0.07)(z.view(WORLD * LOCAL, 2, -1))
    loss.backward()

    assert ddp["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    checked = 0
    for name, p in model.named_parameters():
        scale = p.grad.abs().max().item()  # float32 reductions in another order: relative tolerance
        torch.testing.assert_close(ddp["grads"][name], p.grad, rtol=1e-4, atol=1e-5 * scale, msg=name)
        checked += 1
    assert checked > 50
    # a local-only loss (no gather) would give different gradients: the test can fail
    model.zero_grad()
    z = torch.cat([model(batch[r * LOCAL : (r + 1) * LOCAL].flatten(0, 1)) for r in range(WORLD)])
    z = z.view(WORLD * LOCAL, 2, -1)
    local_only = (SupConLoss(0.07)(z[:LOCAL]) + SupConLoss(0.07)(z[LOCAL:])) / 2
    local_only.backward()
    assert not torch.allclose(ddp["grads"]["projector.2.weight"], model.projector[2].weight.grad, rtol=1e-3)


def test_torchrun_two_process_training_finishes(tmp_path):
    toy = write_toy_cache(tmp_path / "toy", size=32, n_train=16, n_val=8, seed=2)
    cfg = PretrainConfig(
        mode="lesion", train_cache=str(toy["train_cache"]), val_cache=str(toy["val_cache"]),
        lesion_index=str(toy["index"]), out_dir=str(tmp_path / "out"), arch="resnet18", init="random",
        view_size=16, epochs=2, batch_size=8, lr=0.05, proj_hidden=32, proj_dim=16, val_every=1,
        checkpoint_every=1, workers=0, device="cpu", seed=0, log_images=False,
    )
    log_file = tmp_path / "pretrain.log"
    launch(cfg, gpus=2, log_file=log_file)
    out = cfg.outputs()
    history = pd.read_csv(out["history"])
    assert len(history) == 2 and history["val_loss"].notna().all()
    final = torch.load(out["final"], weights_only=True)
    assert final["world_size"] == 2 and len(final["rng"]) == 2
    text = log_file.read_text()
    assert "cpu x2" in text and "global batch 8 (4 per rank)" in text
    assert out["backbone"].is_file()
