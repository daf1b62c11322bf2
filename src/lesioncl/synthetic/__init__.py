"""Synthetic fundus photographs in the real EyePACS and IDRiD layouts (demo and tests).

The demo workflow runs on these instead of the real data sets, through the same
ingestion code: an EyePACS-like raw set in the Kaggle layout and an IDRiD-like
"A. Segmentation" set with lesion masks. Both come from one lesion generator, so
the detector learns on IDRiD-like masks the very lesions that grade the
EyePACS-like images. A DDR-like lesion set (masks and Pascal VOC boxes, in DDR's
``lesion_segmentation`` / ``lesion_detection`` layout, with its quirks) comes from the
same generator (:mod:`.ddr_set`).

What an image shows
-------------------
A bright, orange-red circular field of view on black (mostly a 1.3-1.6 wide frame
with black side borders; some frames nearly square, some with the circle cut at top
and bottom), a branching vessel tree leaving the optic disc (temporal arcades
bending around the macula), a yellowish disc with a paler cup, a darker macula,
low-frequency texture, illumination fall-off and tilt, exposure, sometimes haze,
sensor noise, JPEG compression. Lesion sizes, in pixels of a 512 px wide field of
view (:data:`grading.SIZES_AT_512`):

* microaneurysms: dark-red dots, 2-5 px;
* haemorrhages: dark-red irregular or flame-shaped blots, 8-30 px;
* hard exudates: clusters (10-40 px) of bright yellow spots (2-7 px);
* soft exudates (cotton-wool spots): pale fuzzy patches, 15-35 px;
* neovascularisation: tangles of fine new vessels (25-60 px) on the disc or elsewhere;
* preretinal haemorrhage: a boat-shaped dark-red pool with a flat, horizontal top, 45-90 px.

The grade rule (ICDR-like; :func:`grading.icdr_grade`)
------------------------------------------------------
With the counts of drawn lesions and the number of quadrants of the field of view
(split at its centre) that hold the centre of at least one haemorrhage:

* 4 (proliferative): any neovascularisation or preretinal haemorrhage;
* 3 (severe): else at least 15 haemorrhages spread over all four quadrants;
* 2 (moderate): else at least one haemorrhage, hard exudate or soft exudate;
* 1 (mild): else at least one microaneurysm;
* 0 (none): no lesion.

The sampler draws counts for a target grade that map back to it: grade 1 has 1-8
microaneurysms; grade 2 microaneurysms with at most 10 haemorrhages and/or a few
exudates; grade 3 15-30 haemorrhages placed in all four quadrants plus
microaneurysms and exudates; grade 4 severe-like findings plus new vessels and/or a
preretinal haemorrhage. Every written image is checked against the rule.

Only the lesions carry the grade
--------------------------------
Each image draws its look (size, frame, colour, exposure, illumination, haze,
vessels, disc and macula position, noise) from one random stream that never sees
the grade, its lesion counts from a second and the lesions' shapes and places from
a third, all keyed by (seed, data set, image number). A classifier can therefore
only grade these images by finding their lesions: the property the demo's claim
(lesion-based pretraining beats random initialisation) rests on.
"""

from lesioncl.synthetic.datasets import (
    BAD_KINDS,
    DDR_DETECTION,
    DDR_LABEL_FOLDERS,
    DDR_MASK_TYPES,
    DDR_SEGMENTATION,
    DDR_SPLITS,
    IDRID_IMAGES,
    IDRID_MASK_TYPES,
    IDRID_MASKS,
    IDRID_ROOT,
    IDRID_SETS,
    LESION_COLUMNS,
    TRUTH_COLUMNS,
)
from lesioncl.synthetic.ddr_set import (
    DDR_TRUTH_COLUMNS,
    DdrSetSettings,
    ddr_paths,
    ddr_qc_overlay,
    ddr_stem,
    generate_ddr_lesions,
)
from lesioncl.synthetic.eyepacs_set import (
    EyepacsRecord,
    EyepacsSetSettings,
    generate_eyepacs,
    plan_eyepacs,
)
from lesioncl.synthetic.geometry import (
    Geometry,
    Lesion,
    Rendered,
    eyepacs_geometry,
    idrid_geometry,
)
from lesioncl.synthetic.grading import LESION_KINDS, SIZES_AT_512, icdr_grade, sample_lesion_counts
from lesioncl.synthetic.idrid_set import (
    IdridSetSettings,
    generate_idrid,
    idrid_name,
    idrid_paths,
)
from lesioncl.synthetic.render import render_fundus

__all__ = [
    "BAD_KINDS",
    "DDR_DETECTION",
    "DDR_LABEL_FOLDERS",
    "DDR_MASK_TYPES",
    "DDR_SEGMENTATION",
    "DDR_SPLITS",
    "DDR_TRUTH_COLUMNS",
    "IDRID_IMAGES",
    "IDRID_MASK_TYPES",
    "IDRID_MASKS",
    "IDRID_ROOT",
    "IDRID_SETS",
    "LESION_COLUMNS",
    "LESION_KINDS",
    "SIZES_AT_512",
    "TRUTH_COLUMNS",
    "DdrSetSettings",
    "EyepacsRecord",
    "EyepacsSetSettings",
    "Geometry",
    "IdridSetSettings",
    "Lesion",
    "Rendered",
    "ddr_paths",
    "ddr_qc_overlay",
    "ddr_stem",
    "eyepacs_geometry",
    "generate_ddr_lesions",
    "generate_eyepacs",
    "generate_idrid",
    "icdr_grade",
    "idrid_geometry",
    "idrid_name",
    "idrid_paths",
    "plan_eyepacs",
    "render_fundus",
    "sample_lesion_counts",
]
