"""The lesion index's files: columns, the pickle + JSON writer, the safe loader and its checks.

:func:`load_lesion_index` reads the pickle with a restricted unpickler: only dicts, lists,
tuples, strings and numbers can be built, so a malicious file cannot run code. No
detector code is imported here (the pretraining stage imports the loader).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from lesioncl.utils import atomic_path

log = logging.getLogger("lesioncl.lesions")


SPLITS = ("train", "val")
BOX_COLUMNS = ["x1", "y1", "x2", "y2"]
DET_BOX_COLUMNS = ["det_x1", "det_y1", "det_x2", "det_y2"]
DETECTION_COLUMNS = [
    "image",
    "split",
    "label",
    "label_name",
    "score",
    *BOX_COLUMNS,
    *DET_BOX_COLUMNS,
    "det_width",
    "det_height",
]
MANIFEST_COLUMNS = ["image", "split", "path", "det_path", "det_width", "det_height"]
ROUND_DECIMALS = 1
FILTER_REASONS = ("score", "size", "border")


# --------------------------------------------------------------------------- I/O
def write_lesion_index(
    index: Mapping, out_pkl: str | os.PathLike, out_json: str | os.PathLike
) -> None:
    """The index as a pickle (plain dicts, lists, tuples, str, float) and as JSON."""
    plain = {
        split: {k: [tuple(b) for b in v] for k, v in images.items()}
        for split, images in index.items()
    }
    with atomic_path(out_pkl) as tmp:
        with open(tmp, "wb") as fh:
            pickle.dump(plain, fh, protocol=4)
    with atomic_path(out_json) as tmp:
        tmp.write_text(json.dumps(plain, indent=1, sort_keys=True) + "\n")


class _SafeDType:
    """Stand-in for ``numpy.dtype`` inside a pickle: numeric scalar types only."""

    _NAME = re.compile(r"^[fiu][1248]$")

    def __init__(self, name: Any, align: Any = False, copy: Any = True) -> None:
        if not isinstance(name, str) or not self._NAME.match(name):
            raise pickle.UnpicklingError(
                f"refusing numpy dtype {name!r}: only numeric scalars are allowed"
            )
        self.name = name
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]

    def numpy(self) -> np.dtype:
        return np.dtype(("" if self.byteorder == "|" else self.byteorder) + self.name)


def _safe_scalar(dtype: Any, data: Any = None) -> float | int:
    """Stand-in for ``numpy.core.multiarray.scalar``: decode a numeric scalar to Python."""
    if not isinstance(dtype, _SafeDType) or not isinstance(data, bytes):
        raise pickle.UnpicklingError("refusing a numpy scalar that is not a plain number")
    dt = dtype.numpy()
    if len(data) != dt.itemsize:
        raise pickle.UnpicklingError("malformed numpy scalar in pickle")
    return np.frombuffer(data, dtype=dt)[0].item()


# NumPy writes numeric scalars (np.float32 / np.float64 box coordinates, as a detector
# produces them) with these two globals. They are mapped to the decoders above, which
# build Python numbers only; numpy's own functions are never called from a pickle.
_NUMPY_SCALAR_GLOBALS = {
    ("numpy.core.multiarray", "scalar"): _safe_scalar,
    ("numpy._core.multiarray", "scalar"): _safe_scalar,
    ("numpy", "dtype"): _SafeDType,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, strings and numbers; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        safe = _NUMPY_SCALAR_GLOBALS.get((module, name))
        if safe is not None:
            return safe
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: a lesion index holds only dicts, lists, "
            "tuples, strings and numbers"
        )


def safe_unpickle(data: bytes) -> Any:
    """Unpickle ``data`` allowing only plain containers, strings and numbers."""
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def load_lesion_index(
    path: str | os.PathLike,
    *,
    required_splits: Iterable[str] = (),
    size: float | None = None,
    max_box_size: float | None = None,
) -> dict[str, dict[str, list[tuple[float, float, float, float]]]]:
    """Read and validate a lesion index (``.pkl`` – ours or the authors' – or ``.json``).

    Pickles are read with a restricted unpickler (no code can run). Returns
    ``{split: {image: [(x1, y1, x2, y2), ...]}}`` with tuples of Python floats; images
    with an empty box list are dropped with a warning naming them. ``size`` and
    ``max_box_size``, when given, are checked too.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"lesion index not found: {path}")
    raw = path.read_bytes()
    try:
        if path.suffix == ".json":
            obj = json.loads(raw)
        else:
            obj = safe_unpickle(raw)
    except (pickle.UnpicklingError, json.JSONDecodeError, EOFError, ValueError) as err:
        raise ValueError(
            f"{path}: not a valid lesion index ({err}); expected the pickle written by the "
            "lesions_index rule or the authors' released predictions file"
        ) from err
    index = validate_index(obj, source=str(path), size=size, max_box_size=max_box_size)
    absent = [s for s in required_splits if s not in index]
    if absent:
        raise ValueError(
            f"{path}: the lesion index has no {absent} split(s) (it has {sorted(index)})"
        )
    return index


def validate_index(
    obj: Any,
    *,
    source: str,
    size: float | None = None,
    max_box_size: float | None = None,
) -> dict[str, dict[str, list[tuple[float, float, float, float]]]]:
    """Check the ``{split: {image: [(x1, y1, x2, y2), ...]}}`` structure; return it normalised."""

    def fail(msg: str) -> None:
        raise ValueError(
            f"{source}: {msg}; expected "
            f"{{'train': {{'10_left.jpeg': [(x1, y1, x2, y2), ...]}}, 'val': {{...}}}}"
        )

    if not isinstance(obj, dict):
        fail(f"top level is a {type(obj).__name__}, not a dict")
    out: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {}
    empty: list[str] = []
    for split, images in obj.items():
        if not isinstance(split, str) or not isinstance(images, dict):
            fail(f"split {split!r} must be a string mapping to a dict")
        out[split] = {}
        for image, boxes in images.items():
            if not isinstance(image, str) or not isinstance(boxes, (list, tuple)):
                fail(f"{split}/{image!r} must be a file name mapping to a list of boxes")
            if not boxes:
                empty.append(f"{split}/{image}")
                continue
            clean = []
            for box in boxes:
                if (
                    not isinstance(box, (list, tuple))
                    or len(box) != 4
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)
                ):
                    fail(f"{split}/{image}: box {box!r} is not 4 numbers")
                x1, y1, x2, y2 = (float(v) for v in box)
                if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 < x1 or y2 < y1:
                    fail(f"{split}/{image}: box {box!r} is not finite with x1 <= x2 and y1 <= y2")
                if size is not None and (min(x1, y1) < 0 or max(x2, y2) > size):
                    fail(f"{split}/{image}: box {box!r} leaves the {size}x{size} crop")
                if max_box_size is not None and (x2 - x1 > max_box_size or y2 - y1 > max_box_size):
                    fail(f"{split}/{image}: box {box!r} is larger than {max_box_size} px")
                clean.append((x1, y1, x2, y2))
            out[split][image] = clean
    if empty:
        log.warning("%s: %d images with no boxes left out: %s", source, len(empty), empty[:20])
    return out
