"""The o_O border crop of EyePACS fundus photographs (docs/method.md, "Crop").

The original algorithm (Kaggle 2nd place "o_O", reused by the paper's ``tools/crop.py``):

1. blur the image with PIL's ``ImageFilter.BLUR`` (a 5x5 kernel: the ring of the 16
   outer pixels, divided by 16; the 2-pixel image border is copied unblurred);
2. only if ``w > wide_ratio * h``: background = per-channel maximum of the blurred
   image over the left and right strips of width ``w // strip_divisor``;
   foreground = pixels where any channel exceeds its background by more than
   ``bright_margin``; box = bounding rectangle of the foreground, discarded when its
   width or height is below ``min_box_fraction * h``;
3. otherwise (or when discarded) the centred square;
4. crop the unblurred image to the box, Lanczos-resize to ``size x size``, save as
   JPEG quality 100 with 4:4:4 chroma.

:func:`crop_reference` is that algorithm written plainly (full decode, PIL blur). It is
the yardstick of the tests and of ``benchmarks/bench_crop.py``. :func:`crop_image` is
the production path and gives the same box (to a few full-resolution pixels) much
faster:

* the JPEG is decoded once, at the coarsest DCT scale (1/8, 1/4, 1/2, 1) that serves
  every output (libjpeg scaled IDCT, ``Image.draft``), chosen before the box is known:
  the ``size`` crop of the smallest box the algorithm can return
  (``min_box_fraction * h``), the box search (below) and the detection crop of a box
  as high as the image (:func:`detect_factor`);
* the box is searched on the image reduced by the coarsest DCT scale that keeps its
  height >= ``search_min_height`` (a scaled decode averages the pixels of a block,
  which is the smoothing the blur stands for, so no extra blur is applied there; at
  scale 1 the PIL blur is reproduced exactly and the box is identical to the
  reference's); the box is then mapped back to full resolution;
* the ``size`` crop is Lanczos-resampled from the coarsest reduction that leaves the
  box found at least ``size`` (the decode itself, or its box-averaged
  ``Image.reduce``, often the very image the box was searched on);
* the detection crop (train and val images only: :data:`DETECT_SPLITS`) is the box
  fitted into the detector's ``img_scale`` exactly as its keep-ratio resize would fit
  it (:func:`detect_size`), so the detector reads it without resizing; it is
  area-resampled from the same decode, which may upscale the box by at most
  ``detect_max_upscale`` (1.05: a 3504x2336 photograph, box 2336 px high, is read at
  1/2 scale, 1168 px, for a 1200 px detector input). Only a foreground box too low
  for that decode is decoded again, at the finer scale it needs.

No full-resolution pass happens unless the image is small or the detector needs it.

Choices that differ from the original, on purpose:

* Centred square of a portrait image (``w < h``): the original's ``square_bbox``
  clamps the h x h square to the image, which gives the whole (non-square) image and
  squashes it when resized to 512 x 512. We take the centred ``min(w, h)`` square, so
  the aspect ratio is always kept. For landscape images this is the original's
  centred h x h square (with width exactly h; the original's right edge
  ``w - (w - h) // 2`` makes it h + 1 wide when ``w - h`` is odd).
* Both background strips are ``w // strip_divisor`` wide (the original's right strip
  ``ba[:, -w // 32:]`` is ``ceil(w / 32)`` wide because ``-w // 32`` floors).
* The foreground threshold is computed without uint8 overflow.
* A wide image in which no pixel is brighter than the border strips (the original
  printed "bbox none (???)" and cropped the centred square) is rejected as ``no_fov``
  when ``reject_no_foreground`` is true; otherwise it gets the centred square.
* Images that cannot be used are not cropped but returned as rejects with a reason
  (:data:`REJECT_REASONS`); PIL's ``LOAD_TRUNCATED_IMAGES`` stays off, so a truncated
  JPEG is detected instead of being decoded with grey.
* Any image format Pillow reads is cropped (PNG, TIFF, BMP, ...: APTOS, Messidor-2,
  DDR). Those have no DCT scaling: they are decoded at full resolution and reduced by
  box averaging (``Image.reduce``) for the box search and the crops; the box logic
  and the rejects are the same. 16-bit greyscale is scaled to 8 bits, an alpha
  channel is dropped, other modes are converted to RGB.

The parts: :mod:`.box` (settings, columns, box logic), :mod:`.decode` (decoding and
cropping one image), :mod:`.shards` (rule ``crop_shard``), :mod:`.merge` (rule
``crop_merge``), :mod:`.qc` (the QC picture) and :mod:`.cache` (rule ``crop_cache``:
the crops of a split as one uint8 memmap, read by pretraining and the evaluation).
The public names of the first five are importable from here.
"""

from lesioncl.crop.box import (
    BOX_METHODS,
    DCT_SCALES,
    DETECT_SPLITS,
    LABEL_COLUMNS,
    MANIFEST_COLUMNS,
    REJECT_COLUMNS,
    REJECT_REASONS,
    SHARD_COLUMNS,
    CropParams,
    CropReject,
    CropResult,
    box_factor,
    box_too_small,
    choose_box,
    decode_factor,
    detect_factor,
    detect_size,
    foreground_box,
    is_wide,
    pil_blur,
    refine_box,
    region_factor,
    search_factor,
    smallest_box_side,
    square_box,
)
from lesioncl.crop.decode import (
    crop_image,
    crop_reference,
    decode_reduced,
    save_jpeg,
)
from lesioncl.crop.merge import (
    merge_shards,
)
from lesioncl.crop.qc import (
    qc_figure,
)
from lesioncl.crop.shards import (
    CropTask,
    crop_shard,
    init_worker,
    read_labels,
    run_tasks,
    shard_rows,
)

__all__ = [
    "BOX_METHODS",
    "CropParams",
    "CropReject",
    "CropResult",
    "CropTask",
    "DCT_SCALES",
    "DETECT_SPLITS",
    "LABEL_COLUMNS",
    "MANIFEST_COLUMNS",
    "REJECT_COLUMNS",
    "REJECT_REASONS",
    "SHARD_COLUMNS",
    "box_factor",
    "box_too_small",
    "choose_box",
    "crop_image",
    "crop_reference",
    "crop_shard",
    "decode_factor",
    "decode_reduced",
    "detect_factor",
    "detect_size",
    "foreground_box",
    "init_worker",
    "is_wide",
    "merge_shards",
    "pil_blur",
    "qc_figure",
    "read_labels",
    "refine_box",
    "region_factor",
    "run_tasks",
    "save_jpeg",
    "search_factor",
    "shard_rows",
    "smallest_box_side",
    "square_box",
]
