"""EyePACS (Kaggle "diabetic-retinopathy-detection"): acquisition and the labels table.

* :mod:`.download` – the Kaggle API download (resume, size checks); :mod:`.kaggle_api`
  – the API client (credentials, clear errors).
* :mod:`.archives` – unpacking (:mod:`.volumes`: finding and reading) the byte-split
  multi-part zips (``train.zip.001`` …), 7z volumes and the zipped label CSVs into
  the raw layout.
* :mod:`.rawdir` – the raw folder of each source, its layout checked, its files read.
* :mod:`.labels` – validation of a raw folder and the labels table
  (``results/eyepacs/labels.csv``).

The raw layout, whatever the source (Kaggle download, an existing folder, the
synthetic generator)::

    raw/train/{id}_{left|right}.jpeg      35,126 images
    raw/test/{id}_{left|right}.jpeg       53,576 images
    raw/trainLabels.csv                   image,level
    raw/retinopathy_solution.csv          image,level,Usage (Public | Private)
"""

from lesioncl.eyepacs.common import (
    EXPECTED_COUNTS,
    IMAGE_EXT,
    LABEL_FILES,
    EyepacsError,
    parse_image_names,
)

__all__ = [
    "EXPECTED_COUNTS",
    "IMAGE_EXT",
    "LABEL_FILES",
    "EyepacsError",
    "parse_image_names",
]
