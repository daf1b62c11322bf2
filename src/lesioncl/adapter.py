"""The one frame every Snakemake script runs in (``workflow/scripts/*.py``).

A script is a few lines: a ``main(job)`` that calls one package function with the
rule's inputs, outputs and params, and ``run(snakemake, main)``. :func:`run` does the
rest, the same way for every rule:

* logging: the rule's ``log:`` file (and stderr), through
  :func:`lesioncl.utils.setup_logging`;
* threads: ``torch_threads=True`` limits torch's CPU threads to the rule's ``threads``
  (a CPU job uses the cores it asked for, not the machine's);
* the results folder's provenance stamp, written before the job's work when the folder
  has none yet (:func:`lesioncl.provenance.stamp_from_environment`: how a workflow
  deployed as a module gets its stamp);
* errors: an unexpected error is logged with its traceback and re-raised; the bad-input
  errors a script names in ``clean_errors`` (their message says what to fix) are logged
  as one line and end the job with exit status 1, without a traceback.

:class:`Job` wraps the ``snakemake`` object with the few things scripts used to spell
out each time: an optional input (:meth:`Job.optional_input`), the device resolved from
the config (:meth:`Job.device`, never ``torch.cuda.is_available()`` directly), a
stage's settings dataclass filled from one ``params:`` entry (:meth:`Job.settings`),
and the operational settings that must not rerun a job (:meth:`Job.operational`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, TypeVar

from lesioncl.provenance import ProvenanceError, stamp_from_environment
from lesioncl.utils import resolve_device, setup_logging

T = TypeVar("T")


class Job:
    """One Snakemake job as the scripts see it (a thin view of the ``snakemake`` object)."""

    def __init__(self, smk: Any) -> None:
        self.smk = smk
        self.input = smk.input
        self.output = smk.output
        self.params = smk.params
        self.wildcards = smk.wildcards
        self.threads = int(smk.threads)
        self.log = smk.log
        self.config = smk.config
        self.rule = getattr(smk, "rule", None) or "job"

    def optional_input(self, name: str) -> str | None:
        """The input ``name`` when the rule declared one file under it, else None.

        An input function may return ``[]`` (no file, e.g. a random initialisation) or a
        one-item list; Snakemake hands both over as a (maybe empty) list.
        """
        value = (
            self.input.get(name) if hasattr(self.input, "get") else getattr(self.input, name, None)
        )
        if value is None:
            return None
        files = [value] if isinstance(value, str) else list(value)
        if len(files) > 1:
            raise ValueError(
                f"rule {self.rule}: input {name} has {len(files)} files, expected at most one"
            )
        return str(files[0]) if files else None

    def device(self, key: str = "device") -> str:
        """The torch device of ``params[key]`` (auto | cpu | cuda), resolved once here.

        :func:`lesioncl.utils.resolve_device` stops a job that asked for a GPU, or was
        given one, and sees none (README "No silent CPU fallback").
        """
        return resolve_device(getattr(self.params, key))

    def settings(self, cls: type[T], key: str = "settings", **extra: Any) -> T:
        """The stage's settings dataclass ``cls`` filled from the one ``params[key]`` dict.

        Unknown keys are an error naming them (a config key the package does not know).
        ``extra`` adds values that are not hyper-parameters (e.g. operational settings).
        """
        values = dict(getattr(self.params, key))
        values.update(extra)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"rule {self.rule}: unknown {cls.__name__} settings {unknown}")
        return cls(**values)

    def operational(self, section: str, *keys: str) -> dict[str, Any]:
        """Settings of config ``section`` that change how a job runs, not what it computes.

        They are read from the config here, never passed through ``params:``, so that
        changing them (DataLoader workers, ``compile``, ``channels_last``, the checkpoint
        interval) does not rerun finished jobs (CONTRIBUTING.md "One rule for config").
        """
        values = self.config[section]
        missing = [k for k in keys if k not in values]
        if missing:
            raise KeyError(f"config: {section} has no {missing}")
        return {k: values[k] for k in keys}


def run(
    smk: Any,
    main: Callable[[Job], Any],
    *,
    torch_threads: bool = False,
    clean_errors: tuple[type[BaseException], ...] = (),
) -> Any:
    """Run ``main(Job(smk))`` with the job's logging, threads and error handling."""
    job = Job(smk)
    log = setup_logging(smk.log[0] if len(smk.log) else None)
    if torch_threads:
        try:
            import torch
        except ImportError as err:  # a data-only environment
            raise RuntimeError(
                f"rule {job.rule}: torch_threads needs torch (envs/torch.yaml)"
            ) from err
        torch.set_num_threads(job.threads)
    try:
        stamp_from_environment()
        return main(job)
    # bad input (or another data source's results folder): the message says what to do
    except (ProvenanceError, *clean_errors) as exc:
        log.error("rule %s failed: %s", job.rule, exc)
        raise SystemExit(1) from None
    except Exception:
        log.exception("rule %s failed", job.rule)
        raise
