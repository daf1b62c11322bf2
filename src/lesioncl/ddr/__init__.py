"""DDR's lesion annotations -> boxes -> COCO, for the detector (config ``ddr``).

DDR (Li et al. 2019, 13,673 images, MIT licence) annotates four lesion kinds, the
same as IDRiD's, on 757 images (383 train, 149 valid, 225 test), in two forms:

* ``lesion_segmentation/{train,valid,test}/image/<name>.jpg`` with masks in
  ``.../label/{EX,HE,MA,SE}/<name>.tif`` (``segmentation label``, with a space, in
  ``valid``); 0 / 255 masks. ``ddr.annotations: masks`` turns them into boxes exactly as
  IDRiD's masks (:mod:`lesioncl.idrid.boxes`: one box per 8-connected component).
* ``lesion_detection/{train,valid,test}/<name>.xml``: Pascal VOC boxes with lower-case
  class names ``ma``, ``he``, ``ex``, ``se`` (``ddr.annotations: voc``); the images
  are those of ``lesion_segmentation``.

The set's known faults are handled and counted, never silent: duplicated objects in the
train VOC files are removed (``duplicate_objects_removed``); images whose every mask is
empty although lesions are visible (or whose VOC file lists none) are left out and
listed in ``rejects.csv`` with the reason ``no_lesion`` (as negatives they would teach
the detector that visible lesions are background, and score its correct boxes as false
ones). An unknown class (a mask folder or a VOC name) is an error naming the file.

DDR's valid split becomes ``val``; the detector trains on ``train`` and is measured on
each source's own ``val`` and ``test`` (rule ``detector_eval``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from lesioncl.ddr.coco import REJECT_COLUMNS, DdrCocoSettings, build_ddr_coco
from lesioncl.ddr.layout import (
    ANNOTATIONS,
    LABEL_FOLDERS,
    MASK_CODES,
    SPLITS,
    VOC_CLASSES,
    DdrImage,
    DdrLayoutError,
    VocBoxes,
    find_root,
    read_voc,
    scan_layout,
)


def source_path(ddr: Mapping[str, Any], results: str) -> str:
    """DDR's folder for the configured source (config ``ddr``)."""
    if ddr["source"] == "synthetic":
        return f"{results}/synthetic/ddr"
    if not ddr.get("path"):
        raise ValueError(
            "config: ddr.source is 'path' but ddr.path is not set; set it to the unzipped "
            "DDR-dataset folder (the one holding lesion_segmentation/)"
        )
    return ddr["path"]


def check_ddr_path(path: str | os.PathLike) -> Path:
    """Cheap check before any job: the folder exists and holds ``lesion_segmentation``."""
    return find_root(path)


__all__ = [
    "ANNOTATIONS",
    "DdrCocoSettings",
    "DdrImage",
    "DdrLayoutError",
    "LABEL_FOLDERS",
    "MASK_CODES",
    "REJECT_COLUMNS",
    "SPLITS",
    "VOC_CLASSES",
    "VocBoxes",
    "build_ddr_coco",
    "check_ddr_path",
    "find_root",
    "read_voc",
    "scan_layout",
    "source_path",
]
