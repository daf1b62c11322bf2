"""IDRiD ingestion: the official "A. Segmentation" layout -> lesion boxes -> COCO.

The official layout (docs/method.md; 81 images, 54 train + 27 test, 4288x2848)::

    A. Segmentation/
      1. Original Images/{a. Training Set,b. Testing Set}/IDRiD_NN.jpg
      2. All Segmentation Groundtruths/{a. Training Set,b. Testing Set}/
          1. Microaneurysms/IDRiD_NN_MA.tif
          2. Haemorrhages/IDRiD_NN_HE.tif
          3. Hard Exudates/IDRiD_NN_EX.tif
          4. Soft Exudates/IDRiD_NN_SE.tif
          5. Optic Disc/IDRiD_NN_OD.tif

Not every image has every lesion mask (that is normal); every image has at least one
lesion mask. The input is the official zip (with ``A. Segmentation/`` at its root or one
level down), the folder ``A. Segmentation`` itself, or the folder containing it. A zip
is read member by member, never unpacked.

Masks -> boxes (the original's recipe, docs/method.md, made precise):

* A mask pixel is lesion when the maximum over its colour channels is above
  ``mask_threshold`` (the original: > 1). The real masks are RGB TIFs with the lesion in
  the red channel; palette masks are expanded to RGB first and an alpha channel is
  ignored. A mask whose maximum value is exactly 1 is a 0/1 mask: 1 is lesion (with
  threshold > 1 it would otherwise be empty); this is logged and listed in the summary.
* One box per 8-connected component of the binary mask. The original took the
  bounding rectangles of the *external contours* (OpenCV), which trace 8-connected
  outlines: the two agree except for a component lying inside a hole of another one,
  which the contours drop and we keep (it lies inside the outer box anyway).
  Consequences: lesions that touch -- also only diagonally, by a corner -- are one
  component and one box; a single lesion pixel is a 1x1 box; an empty mask gives no box.
* Classes: 1 microaneurysm, 2 haemorrhage, 3 hard_exudate, 4 soft_exudate; optic-disc
  masks are ignored.
* Boxes are COCO ``[x, y, w, h]`` in pixels covering the component's pixels
  (``w = max_x - min_x + 1``, i.e. x2 = x + w = max_x + 1). ``area`` is the component's
  pixel count (the COCO meaning of area: the object's, not the box's).

Resizing (``max_size``): boxes are extracted from the masks at full resolution and then
scaled with the image (x and w by new_width / width, y and h by new_height / height),
so no mask is ever resampled and no component merges or vanishes through resizing.
A scaled box narrower or lower than ``min_box_size`` output pixels is grown around its
centre to that size (inside the image), so that tiny microaneurysms stay trainable.

The parts: :mod:`.sources` (names, zip or folder), :mod:`.layout` (scan and validate),
:mod:`.boxes` (masks -> boxes), :mod:`.coco` (the COCO files, rule ``idrid_coco``) and
:mod:`.qc` (the QC picture). Their public names are importable from here. The rule's
settings come as one frozen dataclass, :class:`CocoSettings`, filled from its
``params.settings`` (CONTRIBUTING.md "One rule for config").
"""

from lesioncl.idrid.boxes import (
    binarise,
    mask_to_boxes,
    output_size,
    read_mask_values,
    scale_boxes,
)
from lesioncl.idrid.coco import (
    CocoSettings,
    build_idrid_coco,
)
from lesioncl.idrid.layout import (
    IdridImage,
    check_sizes,
    load_layout,
    scan_layout,
)
from lesioncl.idrid.qc import (
    CLASS_COLOURS,
    draw_qc,
)
from lesioncl.idrid.sources import (
    CATEGORIES,
    IMAGES_DIR,
    LAYOUT_HELP,
    LESIONS,
    MASKS_DIR,
    OPTIC_DISC,
    SEGMENTATION_DIR,
    SPLITS,
    FolderSource,
    IdridLayoutError,
    IdridSource,
    Lesion,
    ZipSource,
    check_idrid_path,
    open_idrid_source,
    source_path,
)

__all__ = [
    "CATEGORIES",
    "CLASS_COLOURS",
    "CocoSettings",
    "FolderSource",
    "IMAGES_DIR",
    "IdridImage",
    "IdridLayoutError",
    "IdridSource",
    "LAYOUT_HELP",
    "LESIONS",
    "Lesion",
    "MASKS_DIR",
    "OPTIC_DISC",
    "SEGMENTATION_DIR",
    "SPLITS",
    "ZipSource",
    "binarise",
    "build_idrid_coco",
    "check_idrid_path",
    "check_sizes",
    "draw_qc",
    "load_layout",
    "mask_to_boxes",
    "open_idrid_source",
    "output_size",
    "read_mask_values",
    "scale_boxes",
    "scan_layout",
    "source_path",
]
