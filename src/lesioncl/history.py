"""The per-epoch history of a training run as CSV (pretraining, fine-tuning)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lesioncl.utils import atomic_path


def write_history(
    path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]
) -> None:
    """One row per epoch, ``columns`` in order, written atomically.

    A value a row lacks, None or NaN (e.g. the validation loss of an epoch that was not
    validated) is an empty cell.
    """
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in columns})


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value
