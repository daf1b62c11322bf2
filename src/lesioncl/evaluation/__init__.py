"""DR-grading evaluation of pretrained backbones (quadratic weighted kappa).

* :mod:`.fractions` – nested, stratified label fractions of the training set.
* :mod:`.metrics` – kappa, accuracy, confusion matrix, threshold decoding of
  regression outputs and threshold tuning on the validation set.
* :mod:`.features` – the image cache, the backbone of each compared method,
  batched preprocessing and frozen-feature extraction.
* :mod:`.linear` – linear evaluation on cached frozen features.
* :mod:`.finetune` – the authors' fine-tuning recipe (regression + MSE).
"""
