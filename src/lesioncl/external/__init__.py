"""Graded fundus sets beyond EyePACS, for external evaluation of the pretrained backbones.

Each set is read from its own published layout (:mod:`lesioncl.external.layouts`: IDRiD
"B. Disease Grading", APTOS 2019, Messidor-2 with its adjudicated grades, DDR
"DR_grading") into one table of ``image, level, split, path`` with the images it could
not use listed beside it, each with its reason; sets without an official test split are
split here, stratified by grade and seeded (:mod:`lesioncl.external.split`). The images
then go through the EyePACS crop into a crop cache of the same format
(:mod:`lesioncl.external.crop`), so every evaluation of the EyePACS crops runs on them.
"""

from lesioncl.external.layouts import (
    EXTERNAL_SETS,
    ExternalLayoutError,
    read_external,
)

__all__ = ["EXTERNAL_SETS", "ExternalLayoutError", "read_external"]
