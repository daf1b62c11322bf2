"""The lesion index: detector boxes on the EyePACS crops, filtered, in the authors' format.

Pipeline (``workflow/rules/lesions.smk``):

1. :func:`predict_shard` – one job per shard runs the IDRiD lesion detector over the
   detection-resolution crops (``det_path`` of ``crop_manifest.csv``) of the train
   and val images with ``i % n_shards == shard`` (``i`` counting train+val rows in
   manifest order) and writes every raw detection, in detector coordinates and
   rescaled into the ``size``×``size`` crop.
2. :func:`build_lesion_index` – merges the shards, keeps a box when
   ``score > score_threshold``, its width and height are ``<= max_box_size`` and all
   of x1, y1, x2, y2 lie strictly inside ``(border_margin, size - border_margin)``,
   and writes ``{'train': {'10_left.jpeg': [(x1, y1, x2, y2), ...]}, 'val': {...}}``
   as a pickle (the authors' released format) and as JSON.

Box values are Python floats rounded to 0.1 px (the authors' file held the
detector's floats; integers would move a box edge by up to a pixel). The filters
are applied to the rounded values, so every stored box satisfies them exactly.
Images without a kept box are left out of the index (the authors' loader crashes on
an empty list) and counted in the summary.

Rescaling: the detector sees the box with its aspect kept (``det_width`` ×
``det_height``: the detection crop, made at the detector's input size); the box is
resized to ``size``×``size`` for the crop, so x scales by
``size / det_width`` and y by ``size / det_height``. The original code recorded the
image size as ``(w, h) = shape[:2]`` – swapped – which distorted boxes of every
non-square crop; :func:`rescale_boxes` takes width and height by name, and
:func:`predict_shard` checks the size the detector read against the manifest.

:func:`load_lesion_index` reads such a pickle with a restricted unpickler: only
dicts, lists, tuples, strings and numbers can be built, so a malicious file cannot
run code. No part imports detector code at module level (the pretraining stage
imports the loader).

The parts: :mod:`.predict` (rule ``lesions_predict``), :mod:`.index` (rule
``lesions_index``), :mod:`.fileformat` (columns, writer, safe loader) and :mod:`.qc`
(the pictures). Their public names are importable from here. Each rule's settings
come as one frozen dataclass (:class:`PredictSettings`, :class:`IndexSettings`), filled
from the rule's ``params.settings`` (CONTRIBUTING.md "One rule for config").
"""

from lesioncl.lesions.fileformat import (
    BOX_COLUMNS,
    DET_BOX_COLUMNS,
    DETECTION_COLUMNS,
    FILTER_REASONS,
    MANIFEST_COLUMNS,
    ROUND_DECIMALS,
    SPLITS,
    load_lesion_index,
    safe_unpickle,
    validate_index,
    write_lesion_index,
)
from lesioncl.lesions.index import (
    IndexSettings,
    build_lesion_index,
    filter_reasons,
    make_index,
    read_detections,
    summarise,
)
from lesioncl.lesions.predict import (
    PredictSettings,
    index_key,
    predict_shard,
    read_crop_manifest,
    rescale_boxes,
    shard_rows,
)
from lesioncl.lesions.qc import (
    plot_qc,
    plot_summary,
)

__all__ = [
    "BOX_COLUMNS",
    "DETECTION_COLUMNS",
    "DET_BOX_COLUMNS",
    "FILTER_REASONS",
    "IndexSettings",
    "MANIFEST_COLUMNS",
    "PredictSettings",
    "ROUND_DECIMALS",
    "SPLITS",
    "build_lesion_index",
    "filter_reasons",
    "index_key",
    "load_lesion_index",
    "make_index",
    "plot_qc",
    "plot_summary",
    "predict_shard",
    "read_crop_manifest",
    "read_detections",
    "rescale_boxes",
    "safe_unpickle",
    "shard_rows",
    "summarise",
    "validate_index",
    "write_lesion_index",
]
