"""The IDRiD lesion detector: Faster R-CNN + FPN with MMDetection 3.x.

* :mod:`.config` – the MMDetection config, generated in Python from the workflow's
  ``detector`` section (no mmdet config files are read).
* :mod:`.train` – training and a plain state_dict (rule ``detector_train``);
  :mod:`.resume` – resuming it; :mod:`.metrics` – COCO evaluation and curves.
* :mod:`.qc` – the detector's boxes beside the ground truth (rule ``detector_qc``).
* :mod:`.inference` – batched inference from the generated config and state_dict.
* :mod:`.compat` – narrow, documented fixes for mmdet 3.3 on current numpy/torch.

mmdet is imported lazily (inside functions) so that importing this package is cheap.
"""

from lesioncl.detector.config import CLASSES, build_mmdet_config, read_coco_classes

__all__ = ["CLASSES", "build_mmdet_config", "read_coco_classes"]
