"""GPU check: lesion-based CL pretraining and the 512-px evaluation, measured on one GPU.

One command, about 8 minutes on one H200 (time-boxed: ``--budget-s``, default 480 s):

    PYTHONPATH=src python benchmarks/gpu_check.py --out gpu_check.json

and on the CPU at toy sizes (``--tiny``, the default without a GPU) in about a minute
on 2 cores (``tests/test_gpu_check.py``):

    PYTHONPATH=src python benchmarks/gpu_check.py --tiny --out /tmp/gpu_check.json

It needs only torch, torchvision, numpy and the packages ``lesioncl`` imports on the
training and evaluation paths (pandas, scikit-learn, tqdm, tensorboard, matplotlib),
not mmcv. All data are generated: fundus-like crops (:mod:`lesioncl.pretrain.toydata`)
written in the real cache format (a uint8 ``(N, S, S, 3)`` ``.npy`` memmap and its
``.csv``, CONTRIBUTING.md) and a lesion index pickle. Every figure comes from the
package's own classes: :class:`~lesioncl.pretrain.trainer.Trainer` (its data loader,
batched GPU augmentation, model, loss and optimiser step), ``extract_features`` and
``finetune``.

Sections (each in its own process with its own time limit: an error, an
out-of-memory or a time-out is recorded in the table and the next section runs; the
JSON is rewritten after every section):

* ``pretrain_<variant>``: ResNet-50, 128-px lesion windows, batch 768 pairs (halved
  until it fits), for ``fp32`` (TF32 matmuls and convolutions, as the trainer sets
  them), ``bf16`` (autocast), ``bf16_cl`` (+ channels_last, the config's default) and
  ``bf16_cl_compile`` (+ ``torch.compile``, run last: compiling takes minutes).
  Reported: images/s (2 views per pair) of the model step on views already on the
  GPU (``step``), of the full pipeline - DataLoader workers cutting windows from the
  memmap, host-to-device copy, batched augmentation on the GPU and the same step -
  over whole epochs (``pipeline``), their ratio (target >= 0.8), the ratio without
  the wait for each epoch's first batch (``steady``; the check's epochs are short),
  and the peak GPU memory.
* ``agreement``: the loss and the gradients of one step in fp32 (TF32 off) and under
  bf16 autocast from the same weights and views, from a well-conditioned start (random
  init with ``zero_init_residual``; torchvision's default init is reported beside it,
  see :func:`section_agreement`). Tolerances: relative loss difference <= 0.02, cosine
  of the whole gradient vector >= 0.95, and the gradient's bf16 error at most 0.25 of
  the minibatch noise (the difference between the fp32 gradients of two batches).
* ``features``: frozen-backbone features at 512 px (``extract_features``, bf16,
  channels_last), images/s.
* ``finetune``: a few fine-tuning steps at 512 px, batch 16 (``finetune``), images/s
  of the training steps (the validation pass of the epoch is timed and left out).

Printed: one table and the GPU-hours of the full run's GPU stages scaled from it
(:func:`scaled_estimates`); ``--out``: the same as JSON, with the environment (GPU,
driver, torch, CUDA, cuDNN) and the settings.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

VARIANTS = {
    # name: (amp, channels_last, compile)
    "fp32": (False, False, False),
    "bf16": (True, False, False),
    "bf16_cl": (True, True, False),
    "bf16_cl_compile": (True, True, True),
}
PRESETS = {
    # the paper's scale, for one GPU with ~80 GB or more
    "gpu": dict(
        arch="resnet50", cache_size=512, view_size=128, batch=768, steps_per_epoch=8, warmup_steps=3,
        step_steps=10, pipeline_steps=16, workers=8, agreement_batch=256, eval_size=512, eval_batch=64,
        feature_images=1024, finetune_batch=16, finetune_steps=20, val_images=64,
        variants="fp32,bf16,bf16_cl,bf16_cl_compile", budget_s=480.0,
    ),
    # seconds on a CPU: the same code paths at toy sizes
    "tiny": dict(
        arch="resnet18", cache_size=64, view_size=32, batch=8, steps_per_epoch=2, warmup_steps=1,
        step_steps=2, pipeline_steps=2, workers=1, agreement_batch=8, eval_size=64, eval_batch=8,
        feature_images=16, finetune_batch=4, finetune_steps=2, val_images=8,
        variants="fp32,bf16_cl", budget_s=1500.0,  # generous: a busy CPU, not a time box
    ),
}
# Share of the time budget per section (the compile variant gets what is left).
SHARES = {"pretrain_fp32": 0.15, "pretrain_bf16": 0.11, "pretrain_bf16_cl": 0.11, "agreement": 0.07,
          "features": 0.08, "finetune": 0.11}
MIN_SECTION_S = 20.0
TOLERANCES = {"loss_rel_diff": 0.02, "grad_cosine": 0.95, "grad_error_over_batch_noise": 0.25}
GIB = 2**30


# --------------------------------------------------------------------------- data
def write_synthetic_cache(folder: Path, settings: dict) -> dict:
    """Crop caches (train, val) and a lesion index in the pipeline's formats; returns their paths.

    32 distinct fundus-like crops with their lesion boxes are drawn once and tiled over
    the N rows (writing N distinct images would cost minutes at the paper's scale).
    """
    import numpy as np
    import pandas as pd

    from lesioncl.lesions import write_lesion_index
    from lesioncl.pretrain.toydata import render_crop

    size = settings["cache_size"]
    n_train = settings["batch"] * settings["steps_per_epoch"]
    n_train = max(n_train, settings["feature_images"], settings["finetune_batch"] * settings["finetune_steps"])
    n_val = settings["val_images"]
    rng = np.random.default_rng(0)
    bases = [render_crop(rng, size, int(rng.integers(2, 7)), colorful=bool(k % 2)) for k in range(32)]
    folder.mkdir(parents=True, exist_ok=True)
    index: dict[str, dict] = {}
    paths = {}
    for split, n in (("train", n_train), ("val", n_val)):
        npy = folder / f"crops_{split}.npy"
        array = np.lib.format.open_memmap(npy, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        names = [f"{i}_{'left' if i % 2 == 0 else 'right'}" for i in range(n)]
        offset = 0 if split == "train" else 7
        for i in range(n):
            array[i] = bases[(i + offset) % len(bases)][0]
        array.flush()
        del array
        levels = rng.integers(0, 5, n)
        pd.DataFrame({"image": names, "level": levels, "split": split}).to_csv(npy.with_suffix(".csv"), index=False)
        index[split] = {f"{name}.jpeg": bases[(i + offset) % len(bases)][1] for i, name in enumerate(names)}
        paths[f"{split}_cache"] = str(npy)
    write_lesion_index(index, folder / "lesion_index.pkl", folder / "lesion_index.json")
    paths["lesion_index"] = str(folder / "lesion_index.pkl")
    paths["n_train"], paths["n_val"] = n_train, n_val
    return paths


# --------------------------------------------------------------------------- helpers (worker side)
def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device) -> float | None:
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / GIB
    return None


def _is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _trainer(spec: dict, batch: int, amp: bool, channels_last: bool, compile_: bool, name: str):
    from lesioncl.pretrain.train import PretrainConfig, Trainer

    cfg = PretrainConfig(
        mode="lesion", train_cache=spec["data"]["train_cache"], lesion_index=spec["data"]["lesion_index"],
        out_dir=str(Path(spec["workdir"]) / name), arch=spec["arch"], init="random", view_size=spec["view_size"],
        epochs=1000, batch_size=batch, workers=spec["workers"], amp=amp, channels_last=channels_last,
        compile=compile_, device=spec["device"], seed=0, resume=False, log_images=False,
    )
    return Trainer(cfg)


# --------------------------------------------------------------------------- sections (worker side)
def section_pretrain(spec: dict) -> dict:
    """Step throughput on resident views, then the full pipeline over whole epochs."""
    amp, channels_last, compile_ = VARIANTS[spec["variant"]]
    batch, oom_at = spec["batch"], []
    while True:
        try:
            result = _pretrain(spec, batch, amp, channels_last, compile_)
            result["oom_at_batch"] = oom_at
            return result
        except RuntimeError as err:
            if not _is_oom(err) or batch < 4:
                raise
            oom_at.append(batch)
        # out of the except clause: the traceback, and the tensors its frames hold, are gone
        batch //= 2
        print(f"out of memory at batch {oom_at[-1]}: retrying with {batch}", flush=True)
        _free_memory()


def _pretrain(spec: dict, batch: int, amp: bool, channels_last: bool, compile_: bool) -> dict:
    import torch

    from lesioncl.pretrain.data import TRAIN_STREAM

    device, deadline = spec["device"], spec["deadline"]
    trainer = _trainer(spec, batch, amp, channels_last, compile_, spec["name"])
    try:
        pairs = trainer.global_batch
        images_per_step = 2 * pairs
        # 1. the step alone, on one batch of views already on the device
        t0 = time.perf_counter()
        first = next(iter(trainer.train_loader))
        views = trainer.make_views(first, 0, 0, TRAIN_STREAM)
        del first
        losses = []
        for i in range(spec["warmup_steps"]):
            losses.append(trainer.train_step(views, f"warm-up step {i + 1}")[0])
        _sync(device)
        warmup_s = time.perf_counter() - t0
        _reset_peak(device)
        done, t0 = 0, time.perf_counter()
        while done < spec["step_steps"] and (done == 0 or time.time() < deadline - spec["reserve_s"]):
            losses.append(trainer.train_step(views, f"timed step {done + 1}")[0])
            done += 1
        _sync(device)
        step_s = time.perf_counter() - t0
        step_steps, step_peak = done, _peak_gib(device)
        del views

        # 2. the full pipeline: whole epochs of the trainer's loader + augmentation + step
        _reset_peak(device)
        steps, total_s, first_wait_s, epoch = 0, 0.0, 0.0, 1
        truncated = False
        while steps < spec["pipeline_steps"]:
            if steps and time.time() > deadline - spec["reserve_s"] - total_s / max(1, epoch - 1):
                truncated = True
                break
            trainer.train_sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            for i, batch_u8 in enumerate(trainer.train_loader):
                if i == 0:
                    first_wait_s += time.perf_counter() - t0
                views = trainer.make_views(batch_u8, epoch, i, TRAIN_STREAM)
                losses.append(trainer.train_step(views, f"epoch {epoch}, step {i + 1}")[0])
                steps += 1
            _sync(device)
            total_s += time.perf_counter() - t0
            epoch += 1
        pipe_peak = _peak_gib(device)
        step_ips = images_per_step * step_steps / step_s
        pipe_ips = images_per_step * steps / total_s
        steady_ips = images_per_step * steps / max(total_s - first_wait_s, 1e-9)
        peaks = [p for p in (step_peak, pipe_peak) if p is not None]
        return {
            "batch_pairs": pairs, "images_per_step": images_per_step, "amp_bf16": bool(trainer.cuda and amp),
            "channels_last": channels_last, "compile": compile_, "warmup_steps": spec["warmup_steps"],
            "warmup_s": warmup_s, "step_steps": step_steps, "step_s": step_s, "step_images_per_s": step_ips,
            "pipeline_steps": steps, "pipeline_epochs": epoch - 1, "steps_per_epoch": trainer.steps_per_epoch,
            "pipeline_s": total_s, "first_batch_wait_s": first_wait_s, "pipeline_images_per_s": pipe_ips,
            "steady_images_per_s": steady_ips, "pipeline_over_step": pipe_ips / step_ips,
            "steady_over_step": steady_ips / step_ips, "peak_gib": max(peaks) if peaks else None,
            "loss_first": losses[0], "loss_last": losses[-1], "truncated": truncated,
            "workers": spec["workers"],
            "tf32": bool(trainer.cuda and (torch.get_float32_matmul_precision() != "highest"
                                           or torch.backends.cudnn.allow_tf32)),
        }
    finally:
        del trainer
        _free_memory()


def zero_init_residual(backbone) -> None:
    """torchvision's ``zero_init_residual``: the last BatchNorm of every residual branch
    starts at 0, so each block starts as the identity."""
    import torch

    for module in backbone.modules():
        last = getattr(module, "bn3", None) if hasattr(module, "conv3") else getattr(module, "bn2", None)
        if last is not None and hasattr(module, "downsample"):
            torch.nn.init.zeros_(last.weight)


def section_agreement(spec: dict) -> dict:
    """Loss and gradients of one step: fp32 (TF32 off) against bf16 autocast, same weights and views.

    Two starting points: the trainer's model at torchvision's default random init, and the
    same with ``zero_init_residual``. At the default init a ResNet-50 maps every view to
    nearly the same embedding, and the contrastive gradient is then dominated by rounding
    (on a CPU in bf16: gradient cosine ~0.3); that start is reported, the pass/fail is on the
    second, well-conditioned one (as the ImageNet or a trained start is; ImageNet weights
    are not available offline). The gradient's bf16 error is also set against the minibatch
    noise: the difference between the fp32 gradients of two batches.
    """
    import torch

    from lesioncl.pretrain.data import TRAIN_STREAM

    device = torch.device(spec["device"])
    trainer = _trainer(spec, spec["agreement_batch"], True, True, False, spec["name"])
    batches = iter(trainer.train_loader)
    views = [trainer.make_views(next(batches), 0, step, TRAIN_STREAM) for step in range(2)]
    del batches
    # The trainer's bf16 context on CUDA; the CPU has no such path in the trainer, so a
    # CPU run checks the same comparison with CPU autocast.
    bf16 = trainer.autocast if trainer.cuda else torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    fp32 = torch.autocast(device_type=device.type, enabled=False)

    def one_step(state, context, v, exact):
        trainer.module.load_state_dict(state)  # BatchNorm running statistics too
        trainer.optimizer.zero_grad(set_to_none=True)
        precision, cudnn_tf32 = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
        if exact:
            torch.set_float32_matmul_precision("highest")
            torch.backends.cudnn.allow_tf32 = False
        try:
            with context:
                z = trainer.model(v.flatten(0, 1))
            loss = trainer.contrastive_loss(z)
            loss.backward()
        finally:
            torch.set_float32_matmul_precision(precision)
            torch.backends.cudnn.allow_tf32 = cudnn_tf32
        named = sorted((n, p) for n, p in trainer.module.named_parameters() if p.grad is not None)
        return float(loss.detach()), torch.cat([p.grad.detach().float().flatten() for _, p in named])

    def compare(state) -> dict:
        loss32, g32 = one_step(state, fp32, views[0], exact=True)
        loss16, g16 = one_step(state, bf16, views[0], exact=False)
        _, other = one_step(state, fp32, views[1], exact=True)
        error = float((g16 - g32).norm())
        out = {"loss_fp32": loss32, "loss_bf16": loss16, "loss_rel_diff": abs(loss16 - loss32) / abs(loss32),
               "grad_cosine": float(torch.nn.functional.cosine_similarity(g32, g16, dim=0)),
               "grad_rel_l2": error / max(float(g32.norm()), 1e-30),
               "grad_error_over_batch_noise": error / max(float((other - g32).norm()), 1e-30)}
        out["pass"] = (out["loss_rel_diff"] <= TOLERANCES["loss_rel_diff"]
                       and out["grad_cosine"] >= TOLERANCES["grad_cosine"]
                       and out["grad_error_over_batch_noise"] <= TOLERANCES["grad_error_over_batch_noise"])
        return out

    default_init = compare(copy.deepcopy(trainer.module.state_dict()))
    zero_init_residual(trainer.module.backbone)
    result = compare(copy.deepcopy(trainer.module.state_dict()))
    return {"batch_pairs": trainer.global_batch, **result, "default_init": default_init,
            "start": "random init with zero_init_residual", "tolerances": TOLERANCES,
            "bf16_context": "trainer (CUDA autocast)" if trainer.cuda else "CPU autocast (the trainer uses none on CPU)"}


def section_features(spec: dict) -> dict:
    """Frozen-backbone features of the cached crops at the evaluation's input size."""
    import numpy as np

    from lesioncl.evaluation.features import build_method_backbone, extract_features

    device = spec["device"]
    images = np.load(spec["data"]["train_cache"], mmap_mode="r")[: spec["feature_images"]]
    model = build_method_backbone("random", spec["arch"], seed=0)
    kwargs = dict(input_size=spec["eval_size"], batch_size=spec["eval_batch"], device=device, amp=True,
                  channels_last=True, workers=min(spec["workers"], 4))
    extract_features(model, images[: spec["eval_batch"]], **kwargs)  # CUDA start-up, kernel loading
    _sync(device)
    _reset_peak(device)
    t0 = time.perf_counter()
    feats = extract_features(model, images, **kwargs)
    _sync(device)
    seconds = time.perf_counter() - t0
    return {"images": len(images), "input_size": spec["eval_size"], "batch": spec["eval_batch"],
            "seconds": seconds, "images_per_s": len(images) / seconds, "feature_shape": list(feats.shape),
            "peak_gib": _peak_gib(device)}


def section_finetune(spec: dict) -> dict:
    """``finetune`` for 2 epochs of ``finetune_steps`` steps; the second epoch is timed."""
    import numpy as np
    import torch

    from lesioncl.backbones import feature_dim
    from lesioncl.evaluation.features import build_method_backbone, predict
    from lesioncl.evaluation.finetune import FinetuneSettings, Grader, finetune

    device = spec["device"]
    train = np.load(spec["data"]["train_cache"], mmap_mode="r")
    val = np.load(spec["data"]["val_cache"], mmap_mode="r")
    rng = np.random.default_rng(0)
    n = spec["finetune_batch"] * spec["finetune_steps"]
    model = Grader(build_method_backbone("random", spec["arch"], seed=0), feature_dim(spec["arch"]))
    torch.nn.init.normal_(model.head.weight, std=0.01)
    torch.nn.init.zeros_(model.head.bias)
    settings = FinetuneSettings(
        epochs=2, batch_size=spec["finetune_batch"], input_size=spec["eval_size"], eval_batch_size=spec["eval_batch"],
        tune_thresholds=False, amp=True, channels_last=True, workers=min(spec["workers"], 4),
    )
    _reset_peak(device)
    fit = finetune(model, train, rng.integers(0, 5, n), val, rng.integers(0, 5, len(val)), settings,
                   train_indices=np.arange(n), seed=0, device=device)
    peak = _peak_gib(device)
    # the validation pass inside each epoch, timed alone to leave it out
    _sync(device)
    t0 = time.perf_counter()
    predict(model, val, settings.input_size, settings.eval_batch_size, device, settings.amp,
            settings.channels_last, settings.workers)
    _sync(device)
    val_s = time.perf_counter() - t0
    epoch_s = fit["history"][-1]["seconds"]
    train_s = max(epoch_s - val_s, 1e-9)
    return {"steps_per_epoch": spec["finetune_steps"], "batch": spec["finetune_batch"],
            "input_size": spec["eval_size"], "epoch_s": epoch_s, "val_pass_s": val_s, "train_s": train_s,
            "images_per_s": n / train_s, "peak_gib": peak,
            "train_loss": [row["train_loss"] for row in fit["history"]]}


SECTIONS = {"pretrain": section_pretrain, "agreement": section_agreement, "features": section_features,
            "finetune": section_finetune}


def worker_main(spec_path: str) -> int:
    """Run one section described by a JSON spec; write its result (or its error) beside it."""
    from lesioncl.utils import setup_logging

    setup_logging(None)
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["result_path"])
    try:
        result = {"status": "ok", **SECTIONS[spec["kind"]](spec)}
    except Exception as err:  # recorded in the table; the next section still runs
        traceback.print_exc()
        result = {"status": "oom" if _is_oom(err) else "error", "error": f"{type(err).__name__}: {err}"[:2000]}
    out.write_text(json.dumps(result, indent=1))
    return 0


# --------------------------------------------------------------------------- orchestration
def run_section(spec: dict, timeout_s: float, log_path: Path) -> dict:
    """Run a section in a child process with a time limit; never raises."""
    spec_path = Path(spec["result_path"]).with_suffix(".spec.json")
    spec_path.write_text(json.dumps(spec, indent=1))
    Path(spec["result_path"]).unlink(missing_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(spec_path)]
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            proc.wait(timeout=max(1.0, timeout_s))
            status = None
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the section and its DataLoader workers
            proc.wait()
            status = "timeout"
        except BaseException:  # the check itself was stopped (SIGTERM, Ctrl-C): stop the section too
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    seconds = time.perf_counter() - t0
    result_path = Path(spec["result_path"])
    if status is None and result_path.is_file():
        result = json.loads(result_path.read_text())
    elif status is None:
        result = {"status": "error", "error": f"the section's process exited with code {proc.returncode}"}
    else:
        result = {"status": "timeout", "error": f"stopped after its time limit of {timeout_s:.0f} s"}
    if result["status"] != "ok":
        result["log_tail"] = _tail(log_path)
    result["seconds"] = seconds
    result["time_limit_s"] = timeout_s
    return result


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def environment(device: str) -> dict:
    import numpy as np
    import torch
    import torchvision

    env = {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "numpy": np.__version__, "cuda_runtime": torch.version.cuda, "cpu_count": os.cpu_count(),
        "device": device, "machine": platform.machine(),
    }
    if os.path.isdir("/dev/shm"):  # DataLoader workers hand batches over through it
        env["dev_shm_gib"] = round(shutil.disk_usage("/dev/shm").total / GIB, 1)
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / GIB, 1),
                   compute_capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                   cudnn=torch.backends.cudnn.version())
        if shutil.which("nvidia-smi"):
            try:
                query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                       capture_output=True, text=True, timeout=30)
                env["driver"] = query.stdout.strip().splitlines()[0] if query.stdout.strip() else None
            except (OSError, subprocess.SubprocessError):
                env["driver"] = None
    return env


# The full run (config/eyepacs.yaml; README, "Resources for a full run") that the measured
# throughputs are scaled to: Kaggle train (35,126 images, an upper bound on the images with a
# lesion box), validation = Usage Public (10,906), all 88,702 images for features.
FULL_RUN = {"pretrain_epochs": 1000, "train_images": 35126, "val_images": 10906, "all_images": 88702,
            "methods": 5, "finetune_epochs": 25, "simclr_224_pixels": (224 / 128) ** 2}


def scaled_estimates(sections: dict) -> dict:
    """GPU-hours of the full run's GPU stages from this run's throughputs (only those measured)."""
    def ok(name: str) -> dict | None:
        r = sections.get(name)
        return r if r and r.get("status") == "ok" else None

    f, out = FULL_RUN, {"assumptions": FULL_RUN}
    pre = ok("pretrain_bf16_cl")  # the config's settings (compile: false)
    if pre:
        hours = f["pretrain_epochs"] * f["train_images"] * 2 / pre["pipeline_images_per_s"] / 3600
        out["lesion_pretraining_gpu_h"] = hours
        out["simclr_128_gpu_h"] = hours  # whole images shrunk to 128 px in the workers: the same model work
        out["simclr_224_gpu_h"] = hours * f["simclr_224_pixels"]
    feats, tune = ok("features"), ok("finetune")
    if feats:
        out["features_all_methods_gpu_h"] = f["methods"] * f["all_images"] / feats["images_per_s"] / 3600
    if feats and tune:
        per_epoch = f["train_images"] / tune["images_per_s"] + f["val_images"] / feats["images_per_s"]
        out["finetune_100pct_per_method_seed_gpu_h"] = f["finetune_epochs"] * per_epoch / 3600
    return out


def table_rows(sections: dict) -> list[dict]:
    """One row per section: what the printed table and the JSON's ``table`` show."""
    rows = []
    for name, r in sections.items():
        row = {"section": name, "status": r.get("status"), "batch": None, "images_per_s": None,
               "step_images_per_s": None, "ratio": None, "peak_gib": r.get("peak_gib"), "notes": ""}
        if r.get("status") != "ok":
            row["notes"] = (r.get("error") or "")[:90]
        elif name.startswith("pretrain_"):
            row.update(batch=r["batch_pairs"], images_per_s=r["pipeline_images_per_s"],
                       step_images_per_s=r["step_images_per_s"], ratio=r["pipeline_over_step"])
            row["notes"] = (f"steady {r['steady_over_step']:.2f}; warm-up {r['warmup_s']:.0f} s; "
                            f"{r['steps_per_epoch']} steps/epoch")
            if r["oom_at_batch"]:
                row["notes"] += f"; OOM at {r['oom_at_batch']}"
        elif name == "agreement":
            row["batch"] = r["batch_pairs"]
            d = r["default_init"]
            row["notes"] = (f"{'PASS' if r['pass'] else 'FAIL'}: loss rel diff {r['loss_rel_diff']:.1e}, grad cos "
                            f"{r['grad_cosine']:.3f}, error/batch noise {r['grad_error_over_batch_noise']:.2f} "
                            f"(default init: cos {d['grad_cosine']:.2f}, "
                            f"{d['grad_error_over_batch_noise']:.2f})")
        elif name == "features":
            row.update(batch=r["batch"], images_per_s=r["images_per_s"])
            row["notes"] = f"{r['images']} images at {r['input_size']} px"
        elif name == "finetune":
            row.update(batch=r["batch"], images_per_s=r["images_per_s"])
            row["notes"] = f"{r['steps_per_epoch']} steps at {r['input_size']} px"
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    head = ["section", "status", "batch", "img/s", "step img/s", "ratio", "peak GiB", "notes"]
    body = [[r["section"], r["status"], fmt(r["batch"], "d"), fmt(r["images_per_s"], ".0f"),
             fmt(r["step_images_per_s"], ".0f"), fmt(r["ratio"], ".2f"), fmt(r["peak_gib"], ".1f"), r["notes"]]
            for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["| " + " | ".join(str(x).ljust(w) for x, w in zip(line, widths)) + " |" for line in [head] + body]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_check.json", help="JSON written after every section")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="toy sizes (the default on the CPU)")
    p.add_argument("--workdir", help="where the synthetic cache goes (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (data, section logs)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    for key, value in PRESETS["gpu"].items():
        kind = type(value)
        p.add_argument(f"--{key.replace('_', '-')}", type=kind, default=None,
                       help=f"default {value} (tiny: {PRESETS['tiny'][key]})")
    args = p.parse_args(argv)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args.worker)

    def stop(signum, frame):  # noqa: ARG001 - SIGTERM (e.g. `timeout`): write the JSON on the way out
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    import torch

    start = time.time()
    if args.device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not torch.cuda.is_available():
        print("ERROR: --device cuda but torch sees no CUDA GPU", file=sys.stderr)
        return 2
    else:
        device = args.device
    preset = "tiny" if args.tiny or device == "cpu" else "gpu"
    settings = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in PRESETS[preset].items()}
    variants = [v.strip() for v in settings["variants"].split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"ERROR: unknown variants {unknown}; choose from {list(VARIANTS)}", file=sys.stderr)
        return 2
    budget = settings["budget_s"]
    out = Path(args.out)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="gpu_check_"))
    workdir.mkdir(parents=True, exist_ok=True)
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "preset": preset,
              "settings": settings, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
              "sections": {}, "table": [], "finished": False}

    def save() -> None:
        report["table"] = table_rows(report["sections"])
        report["full_run_estimates"] = scaled_estimates(report["sections"])
        report["elapsed_s"] = time.time() - start
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(report, indent=1, default=str) + "\n")
        tmp.replace(out)

    try:
        try:
            report["environment"] = environment(device)
        except Exception as err:  # a half-broken driver must not stop the check
            report["environment"] = {"device": device, "error": f"{type(err).__name__}: {err}"}
        print(json.dumps(report["environment"]), flush=True)
        save()
        t0 = time.perf_counter()
        try:
            data = write_synthetic_cache(workdir / "cache", settings)
            report["sections"]["data"] = {"status": "ok", "seconds": time.perf_counter() - t0, **data}
        except Exception as err:
            report["sections"]["data"] = {"status": "error", "error": f"{type(err).__name__}: {err}",
                                          "seconds": time.perf_counter() - t0}
            return 1
        save()

        plan = [(f"pretrain_{v}", "pretrain", v) for v in variants if v != "bf16_cl_compile"]
        plan += [("agreement", "agreement", None), ("features", "features", None), ("finetune", "finetune", None)]
        plan += [(f"pretrain_{v}", "pretrain", v) for v in variants if v == "bf16_cl_compile"]
        for i, (name, kind, variant) in enumerate(plan):
            left = budget - (time.time() - start)
            later = sum(max(MIN_SECTION_S, SHARES.get(n, 0.0) * budget) for n, _, _ in plan[i + 1:])
            share = SHARES.get(name)
            limit = left - later if share is None else min(share * budget, left - later)
            limit = max(limit, min(MIN_SECTION_S, left))
            if left < MIN_SECTION_S / 2:
                report["sections"][name] = {"status": "skipped", "error": "the time budget is spent"}
                save()
                continue
            spec = {"kind": kind, "name": name, "variant": variant, "device": device, "workdir": str(workdir),
                    "data": data, "result_path": str(workdir / f"{name}.result.json"),
                    "deadline": time.time() + limit, "reserve_s": min(15.0, 0.2 * limit), **settings}
            print(f"[{time.time() - start:5.0f} s] {name}: time limit {limit:.0f} s", flush=True)
            result = run_section(spec, limit, workdir / f"{name}.log")
            report["sections"][name] = result
            save()
            print(f"[{time.time() - start:5.0f} s] {name}: {result['status']} in {result['seconds']:.0f} s", flush=True)
        report["finished"] = True
    finally:
        save()
        print(format_table(report["table"]))
        estimates = {k: round(v, 2) for k, v in report["full_run_estimates"].items() if k.endswith("_h")}
        print(f"full run (config/eyepacs.yaml) scaled from these figures, GPU-hours: {json.dumps(estimates)}")
        print(f"wrote {out}")
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    ok = all(r.get("status") == "ok" for r in report["sections"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
