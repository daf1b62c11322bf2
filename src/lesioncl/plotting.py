"""Figures of every stage: matplotlib without a display, PNGs written atomically."""

from __future__ import annotations

import os
from typing import Any

from lesioncl.utils import atomic_path


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (jobs have no display); imported on use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | os.PathLike, close: bool = True, **savefig: Any) -> None:
    """Write ``fig`` to ``path`` as PNG, atomically (``savefig`` options: dpi, bbox_inches).

    The figure is closed afterwards unless ``close`` is false.
    """
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", **savefig)
    if close:
        pyplot().close(fig)
