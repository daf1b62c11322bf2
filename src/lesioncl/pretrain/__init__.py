"""Contrastive pretraining: lesion-based (the paper) and whole-image SimCLR (its baseline).

Modules, in the order data flows through them:

* :mod:`.cache`   – the 512 crops decoded once into a uint8 memmap per split.
* :mod:`.data`    – the lesion-window sampler, the datasets and the epoch sampler.
* :mod:`.augment` – the view augmentation, batched on tensors (on the GPU when training there).
* :mod:`.builder` – backbone + projection head.
* :mod:`.loss`    – SupCon loss (SimCLR's NT-Xent when no labels are given).
* :mod:`.train`   – the trainer: DDP, bf16, resumable checkpoints, logs.

Nothing is imported eagerly so that the cache step runs without torch.
"""
