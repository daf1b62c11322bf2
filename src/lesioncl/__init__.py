"""Lesion-based contrastive learning for diabetic retinopathy grading (MICCAI 2021), reproduced.

One module per workflow stage; ``workflow/scripts/`` holds thin Snakemake adapters.
"""

__version__ = "0.1.0"
