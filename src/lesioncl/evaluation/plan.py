"""What the evaluation stage runs: its methods, their weights, run files, runtimes.

Read by ``workflow/rules/evaluation.smk`` when the workflow is parsed (the rule files
hold rules only; their logic lives here, where it is tested). ``config`` arguments are
the workflow's config sections as dicts.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping, Sequence

from lesioncl.evaluation.fractions import fraction_tag

#: Lesion-based CL on each window source (rule ``pretrain_lesion``): the detector's index
#: (the paper), its random-window control, on synthetic data the generator's true boxes, and
#: its salient-window control.
LESION_METHODS = ("lesion_cl", "lesion_cl_random", "lesion_cl_truth", "lesion_cl_salient")
#: Methods named without a size or a weights file.
BUILTIN_METHODS = (*LESION_METHODS, "random", "imagenet")
_SIMCLR = re.compile(r"simclr_(\d+)")


def methods(evaluation: Mapping) -> list[str]:
    """``evaluation.methods`` followed by the names of ``evaluation.extra_weights`` not in it."""
    listed = list(evaluation["methods"])
    return listed + [m for m in evaluation["extra_weights"] if m not in listed]


def controls(evaluation: Mapping) -> list[str]:
    """``evaluation.controls`` not already among the methods (run by the target ``controls``)."""
    listed = methods(evaluation)
    return [m for m in evaluation.get("controls", []) if m not in listed]


def present(names: Sequence[str], files_of) -> list[str]:
    """The methods of ``names`` all of whose result files (``files_of(method)``) exist: the
    controls the kappa table and the report include (a control not run yet is left out)."""
    return [m for m in names if all(os.path.exists(f) for f in files_of(m))]


def check_methods(names: Sequence[str], extra_weights: Mapping, simclr_sizes: Sequence) -> None:
    """A clear config error for a method that no rule makes (names the fix)."""
    sizes = [int(s) for s in simclr_sizes]
    for method in names:
        if method in extra_weights or method in BUILTIN_METHODS:
            continue
        m = _SIMCLR.fullmatch(method)
        if m is None:
            raise ValueError(
                f"config: evaluation.methods has {method!r}; use {', '.join(LESION_METHODS)}, "
                "simclr_<size>, random, imagenet or a name defined in evaluation.extra_weights"
            )
        if int(m.group(1)) not in sizes:
            raise ValueError(
                f"config: evaluation.methods has {method!r} but pretrain.simclr_sizes is "
                f"{sizes}; add {m.group(1)} there or drop the method"
            )


def check_sources(names: Sequence[str], eyepacs_source: str) -> None:
    """``lesion_cl_truth`` needs the generator's lesion boxes: synthetic data only."""
    if "lesion_cl_truth" in names and eyepacs_source != "synthetic":
        raise ValueError(
            "config: evaluation.controls (or evaluation.methods) has lesion_cl_truth, which "
            "pretrains on the synthetic generator's true lesion boxes, but eyepacs.source is "
            f"{eyepacs_source!r}; real data have no such boxes: drop lesion_cl_truth there "
            "(lesion_cl_random is the control for real data)"
        )


def finetune_fractions(evaluation: Mapping) -> list[str]:
    """Tags of the fractions fine-tuned: ``evaluation.finetune.fractions``, or all of
    ``evaluation.fractions`` when it is null; a clear config error for one that the
    linear evaluation does not run (the fractions files are made for those)."""
    linear = [fraction_tag(f) for f in evaluation["fractions"]]
    chosen = evaluation["finetune"].get("fractions") or evaluation["fractions"]
    tags = [fraction_tag(f) for f in chosen]
    unknown = sorted(set(tags) - set(linear), key=float)
    if unknown:
        raise ValueError(
            f"config: evaluation.finetune.fractions has {unknown}, which are not in "
            f"evaluation.fractions {linear}; add them there or drop them"
        )
    return tags


def finetune_model_path(results: str, wildcards, fractions: Sequence[str]) -> str:
    """Where a fine-tuning run keeps its grader: beside its result, for the largest
    fine-tuned fraction only ("" for the others: nothing kept)."""
    if float(wildcards.fraction) != max(float(f) for f in fractions):
        return ""
    return (
        f"{results}/eval/finetune/{wildcards.method}/"
        f"frac{wildcards.fraction}_seed{wildcards.seed}_model.pt"
    )


def pretrained(names: Sequence[str]) -> list[str]:
    """The methods trained by the pretraining stage (lesion_cl*, simclr_<size>)."""
    return [m for m in names if m in LESION_METHODS or _SIMCLR.fullmatch(m)]


def method_weights(method: str, evaluation: Mapping, results: str) -> list[str]:
    """The backbone file a method starts from ([] for random and hub-cache ImageNet)."""
    if method in evaluation["extra_weights"]:
        return [evaluation["extra_weights"][method]]
    if method == "imagenet":
        return [evaluation["imagenet_weights"]] if evaluation["imagenet_weights"] else []
    if method == "random":
        return []
    return [f"{results}/pretrain/{method}/backbone.pth"]


def run_files(
    results: str, evaluation: str, names: Sequence[str], fractions: Sequence[str], seeds: Sequence
) -> list[str]:
    """Every run JSON of one evaluation (methods x fractions x seeds, in that order)."""
    return [
        f"{results}/eval/{evaluation}/{method}/frac{fraction}_seed{seed}.json"
        for method, fraction, seed in itertools.product(names, fractions, seeds)
    ]


def result_files(
    results: str,
    names: Sequence[str],
    evaluations: Sequence[str],
    fractions_of: Mapping[str, Sequence[str]],
    seeds_of: Mapping[str, Sequence],
) -> dict[str, list[str]]:
    """Every run JSON of ``names``, per evaluation (``linear``, ``finetune``; [] when off)."""
    return {
        e: run_files(results, e, names, fractions_of[e], seeds_of[e]) if e in evaluations else []
        for e in ("linear", "finetune")
    }


def images_per_minute(device: str) -> int:
    """Rough inference throughput for runtime requests (a training image costs ~3)."""
    return 30000 if device != "cpu" else 120


def features_runtime(n_images: int, device: str) -> int:
    """Minutes for the features of one split."""
    return int(10 + 2 * n_images / images_per_minute(device))


def finetune_runtime(
    fraction: float, n_train: int, n_val: int, n_test: int, finetune: Mapping, device: str
) -> int:
    """Minutes for one fine-tuning run (its epochs over the fraction, validation, test)."""
    labelled = float(fraction) * n_train
    trained = max(labelled, finetune["min_steps_per_epoch"] * finetune["batch_size"])
    per_epoch = 3 * trained + n_val
    final = n_val + n_test
    return int(20 + 2 * (finetune["epochs"] * per_epoch + final) / images_per_minute(device))
