"""Names, counts and the error type shared by the EyePACS modules."""

from __future__ import annotations

import pandas as pd

IMAGE_EXT = ".jpeg"  # Kaggle's
# Image files of a raw folder, in order of preference when one image has several
# (case-insensitive): Kaggle's JPEGs, or the same images in another format Pillow reads.
IMAGE_EXTS = (".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp")
# The label files of the raw layout: trainLabels.csv lists the Kaggle train
# images, retinopathy_solution.csv the Kaggle test images (with Usage).
LABEL_FILES = {"train": "trainLabels.csv", "test": "retinopathy_solution.csv"}
LABEL_COLUMNS = {"train": ["image", "level"], "test": ["image", "level", "Usage"]}
# The raw image folders (Kaggle's names).
IMAGE_DIRS = ("train", "test")
# The full competition: 35,126 train images; 53,576 test images of which 10,906
# are scored on the public leaderboard (our val) and 42,670 on the private one (test).
EXPECTED_COUNTS = {"train": 35126, "val": 10906, "test": 42670}
USAGE_TO_SPLIT = {"Public": "val", "Private": "test"}
LEVELS = (0, 1, 2, 3, 4)
# `10_left` → patient 10, left eye. Kaggle's ids are positive integers.
IMAGE_PATTERN = r"^(?P<patient_id>[0-9]+)_(?P<eye>left|right)$"


class EyepacsError(RuntimeError):
    """Unusable EyePACS input; the message names the file and the fix."""


def parse_image_names(names: pd.Series) -> pd.DataFrame:
    """Parse image names (``10_left``) into ``patient_id`` (Int64) and ``eye``.

    A trailing ``.jpeg`` is accepted and removed. Names that do not parse get
    ``<NA>`` in both columns; the caller lists them as problems.
    """
    stems = names.astype("string").str.strip()
    stems = stems.str.replace(r"\.jpeg$", "", regex=True)
    parts = stems.str.extract(IMAGE_PATTERN)
    out = pd.DataFrame(index=names.index)
    out["image"] = stems
    # Leading zeros (`007_left`) would make two spellings of one image.
    ok = parts["patient_id"].notna() & ~parts["patient_id"].str.match(r"^0[0-9]", na=False)
    out["patient_id"] = pd.to_numeric(parts["patient_id"].where(ok), errors="coerce").astype(
        "Int64"
    )
    out["eye"] = parts["eye"].where(ok)
    return out
