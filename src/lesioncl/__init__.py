"""Lesion-based contrastive learning for diabetic retinopathy grading (MICCAI 2021), reproduced.

One module (or subpackage) per workflow stage, named after it; ``workflow/scripts/``
holds thin Snakemake adapters (:mod:`lesioncl.adapter`). CONTRIBUTING.md has the map.
"""

__version__ = "0.1.0"
