"""The MMDetection 3.x config of the lesion detector, generated from the workflow config.

:func:`mmdet_config_dict` turns the workflow's ``detector`` section (every key
present, as the schema's defaults fill it) into a plain dict in MMDetection 3.x's
config vocabulary; :func:`build_mmdet_config` wraps it in an ``mmengine.Config``.
Nothing is read from mmdet's own config files.

The schema's defaults are the paper's recipe (mmdet 2.8's ``faster_rcnn_r50_fpn_1x``
with the authors' changes): ResNet-50 + FPN, ImageNet backbone with stage 1 frozen
and BN statistics frozen, 4 classes, keep-ratio resize to fit (1600, 1200), random
horizontal flip, SGD lr 0.005 / momentum 0.9 / wd 1e-4, linear warm-up over 100
iterations from 0.001×lr, 100 epochs with lr ÷10 at epochs 50 and 80, batch 2; test
score threshold 0.05, NMS IoU 0.5, at most 100 boxes per image.

Keys beyond the paper, whose defaults are MMDetection's standard values so the real
recipe is unchanged, exist to make the CPU demo small and fast:

* ``anchor_scales`` – anchor side in units of the FPN level's stride (default [8]:
  32 px on the stride-4 level). Smaller scales suit the tiny lesions of the
  down-scaled demo images.
* ``fpn_channels`` (256), ``roi_fc_channels`` (1024) – widths of the FPN outputs and
  of the box head's two shared FC layers.
* ``rpn_batch`` (256), ``roi_batch`` (512) – anchors / proposals sampled per image for
  the RPN and box-head losses.
* ``val_interval`` – epochs between evaluations on the test set during training, for
  the TensorBoard curves only (no model is selected with them).
* ``log_interval`` – iterations between training-log lines.
* ``train_crop`` (null) – train on a random square window of this side of each resized
  image, one holding at least one box: cheaper iterations, hence more of them in the
  same time. The test pipeline (and inference) always reads whole images.

BN statistics are frozen (``norm_eval``) with a pretrained backbone, as in the paper;
with ``init: random`` they must be learnt, so BN layers train.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

CLASSES = ("microaneurysm", "haemorrhage", "hard_exudate", "soft_exudate")
DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}
STAGE_CHANNELS = {
    18: [64, 128, 256, 512],
    34: [64, 128, 256, 512],
    50: [256, 512, 1024, 2048],
    101: [256, 512, 1024, 2048],
}
# ImageNet statistics in 0-255 RGB (what torchvision's weights expect).
PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]
WARMUP_RATIO = 0.001  # mmdet 2.x default used by the paper's config


def read_coco_classes(coco_json: str | os.PathLike) -> tuple[str, ...]:
    """Category names of a COCO file ordered by id, checked against :data:`CLASSES`."""
    path = Path(coco_json)
    try:
        cats = json.loads(path.read_text())["categories"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{path}: not a COCO detection json with 'categories' ({err}); rerun the idrid rule"
        ) from err
    names = tuple(c["name"] for c in sorted(cats, key=lambda c: c["id"]))
    if names != CLASSES:
        raise ValueError(
            f"{path}: categories {names} differ from the expected {CLASSES} "
            "(ids 1..4); regenerate it with the idrid rule"
        )
    return names


def mmdet_config_dict(
    hp: Mapping[str, Any],
    *,
    train_ann: str,
    train_images: str,
    test_ann: str,
    test_images: str,
    work_dir: str,
    seed: int = 0,
    backbone_checkpoint: str | None = None,
    tensorboard_dir: str | None = None,
    classes: tuple[str, ...] = CLASSES,
    resume_checkpoints: bool = False,
) -> dict[str, Any]:
    """The complete MMDetection config as nested dicts.

    ``hp`` is the workflow's ``detector`` section. ``backbone_checkpoint`` is the
    torchvision-format ResNet state_dict to initialise the backbone from (None: random).
    Image folders end with ``/`` (mmdet joins them with the COCO ``file_name``).
    ``resume_checkpoints``: mmengine saves a full training state in ``work_dir`` after
    every epoch (the last two kept), from which an interrupted run resumes
    (:func:`lesioncl.detector.train.train_detector`).
    """
    arch = hp["backbone"]
    if arch not in DEPTHS:
        raise ValueError(f"detector.backbone {arch!r} is not one of {sorted(DEPTHS)}")
    depth = DEPTHS[arch]
    img_scale = tuple(int(v) for v in hp["img_scale"])
    epochs = int(hp["epochs"])
    steps = [int(s) for s in hp["lr_steps"]]
    if any(s >= epochs for s in steps) or steps != sorted(steps):
        raise ValueError(
            f"detector.lr_steps {steps} must be increasing epochs below detector.epochs={epochs}"
        )
    workers = int(hp["workers"])
    pretrained = backbone_checkpoint is not None
    num_classes = len(classes)

    backbone = dict(
        type="ResNet",
        depth=depth,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=int(hp["frozen_stages"]),
        norm_cfg=dict(type="BN", requires_grad=True),
        norm_eval=pretrained,
        style="pytorch",
        init_cfg=dict(type="Pretrained", checkpoint=str(backbone_checkpoint))
        if pretrained
        else None,
    )
    fpn = int(hp["fpn_channels"])
    model = dict(
        type="FasterRCNN",
        data_preprocessor=dict(
            type="DetDataPreprocessor",
            mean=PIXEL_MEAN,
            std=PIXEL_STD,
            bgr_to_rgb=True,
            pad_size_divisor=32,
        ),
        backbone=backbone,
        neck=dict(type="FPN", in_channels=STAGE_CHANNELS[depth], out_channels=fpn, num_outs=5),
        rpn_head=dict(
            type="RPNHead",
            in_channels=fpn,
            feat_channels=fpn,
            anchor_generator=dict(
                type="AnchorGenerator",
                scales=[float(s) for s in hp["anchor_scales"]],
                ratios=[0.5, 1.0, 2.0],
                strides=[4, 8, 16, 32, 64],
            ),
            bbox_coder=dict(
                type="DeltaXYWHBBoxCoder",
                target_means=[0.0, 0.0, 0.0, 0.0],
                target_stds=[1.0, 1.0, 1.0, 1.0],
            ),
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
            loss_bbox=dict(type="L1Loss", loss_weight=1.0),
        ),
        roi_head=dict(
            type="StandardRoIHead",
            bbox_roi_extractor=dict(
                type="SingleRoIExtractor",
                roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0),
                out_channels=fpn,
                featmap_strides=[4, 8, 16, 32],
            ),
            bbox_head=dict(
                type="Shared2FCBBoxHead",
                in_channels=fpn,
                fc_out_channels=int(hp["roi_fc_channels"]),
                roi_feat_size=7,
                num_classes=num_classes,
                bbox_coder=dict(
                    type="DeltaXYWHBBoxCoder",
                    target_means=[0.0, 0.0, 0.0, 0.0],
                    target_stds=[0.1, 0.1, 0.2, 0.2],
                ),
                reg_class_agnostic=False,
                loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                loss_bbox=dict(type="L1Loss", loss_weight=1.0),
            ),
        ),
        train_cfg=dict(
            rpn=dict(
                assigner=dict(
                    type="MaxIoUAssigner",
                    pos_iou_thr=0.7,
                    neg_iou_thr=0.3,
                    min_pos_iou=0.3,
                    match_low_quality=True,
                    ignore_iof_thr=-1,
                ),
                sampler=dict(
                    type="RandomSampler",
                    num=int(hp["rpn_batch"]),
                    pos_fraction=0.5,
                    neg_pos_ub=-1,
                    add_gt_as_proposals=False,
                ),
                allowed_border=-1,
                pos_weight=-1,
                debug=False,
            ),
            rpn_proposal=dict(
                nms_pre=2000,
                max_per_img=1000,
                nms=dict(type="nms", iou_threshold=0.7),
                min_bbox_size=0,
            ),
            rcnn=dict(
                assigner=dict(
                    type="MaxIoUAssigner",
                    pos_iou_thr=0.5,
                    neg_iou_thr=0.5,
                    min_pos_iou=0.5,
                    match_low_quality=False,
                    ignore_iof_thr=-1,
                ),
                sampler=dict(
                    type="RandomSampler",
                    num=int(hp["roi_batch"]),
                    pos_fraction=0.25,
                    neg_pos_ub=-1,
                    add_gt_as_proposals=True,
                ),
                pos_weight=-1,
                debug=False,
            ),
        ),
        test_cfg=dict(
            rpn=dict(
                nms_pre=1000,
                max_per_img=1000,
                nms=dict(type="nms", iou_threshold=0.7),
                min_bbox_size=0,
            ),
            rcnn=dict(
                score_thr=float(hp["score_thr"]),
                nms=dict(type="nms", iou_threshold=float(hp["nms_iou"])),
                max_per_img=int(hp["max_per_img"]),
            ),
        ),
    )

    metainfo = dict(classes=tuple(classes))
    train_pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", with_bbox=True),
        dict(type="Resize", scale=img_scale, keep_ratio=True),
    ]
    crop = hp["train_crop"]
    if crop:
        # A random window of the resized image per sample, holding at least one box
        # (boxes cut by its border are clipped): more, cheaper iterations.
        train_pipeline.append(
            dict(type="RandomCrop", crop_size=(int(crop), int(crop)), allow_negative_crop=False)
        )
    train_pipeline += [
        dict(type="RandomFlip", prob=0.5),
        dict(type="PackDetInputs"),
    ]
    # No LoadAnnotations: the evaluator reads the ground truth from the COCO file, and
    # the same pipeline serves unlabelled images (the EyePACS crops).
    test_pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="Resize", scale=img_scale, keep_ratio=True),
        dict(
            type="PackDetInputs",
            meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"),
        ),
    ]
    loader_common = dict(num_workers=workers, persistent_workers=workers > 0)
    train_dataloader = dict(
        batch_size=int(hp["batch_size"]),
        **loader_common,
        sampler=dict(type="DefaultSampler", shuffle=True),
        batch_sampler=dict(type="AspectRatioBatchSampler"),
        dataset=dict(
            type="CocoDataset",
            data_root="",
            metainfo=metainfo,
            ann_file=train_ann,
            data_prefix=dict(img=_folder(train_images)),
            filter_cfg=dict(filter_empty_gt=True, min_size=8),
            pipeline=train_pipeline,
        ),
    )
    val_dataloader = dict(
        batch_size=1,
        **loader_common,
        drop_last=False,
        sampler=dict(type="DefaultSampler", shuffle=False),
        dataset=dict(
            type="CocoDataset",
            data_root="",
            metainfo=metainfo,
            ann_file=test_ann,
            data_prefix=dict(img=_folder(test_images)),
            test_mode=True,
            pipeline=test_pipeline,
        ),
    )
    evaluator = dict(type="CocoMetric", ann_file=test_ann, metric="bbox", format_only=False)

    param_scheduler = []
    if int(hp["warmup_iters"]) > 0:
        param_scheduler.append(
            dict(
                type="LinearLR",
                start_factor=WARMUP_RATIO,
                by_epoch=False,
                begin=0,
                end=int(hp["warmup_iters"]),
            )
        )
    param_scheduler.append(
        dict(type="MultiStepLR", begin=0, end=epochs, by_epoch=True, milestones=steps, gamma=0.1)
    )

    vis_backends: list[dict[str, Any]] = [dict(type="LocalVisBackend")]
    if tensorboard_dir:
        vis_backends.append(dict(type="TensorboardVisBackend", save_dir=str(tensorboard_dir)))

    return dict(
        default_scope="mmdet",
        work_dir=str(work_dir),
        model=model,
        metainfo=metainfo,
        train_pipeline=train_pipeline,
        test_pipeline=test_pipeline,
        train_dataloader=train_dataloader,
        val_dataloader=val_dataloader,
        test_dataloader=val_dataloader,
        val_evaluator=evaluator,
        test_evaluator=evaluator,
        train_cfg=dict(
            type="EpochBasedTrainLoop", max_epochs=epochs, val_interval=int(hp["val_interval"])
        ),
        val_cfg=dict(type="ValLoop"),
        test_cfg=dict(type="TestLoop"),
        optim_wrapper=dict(
            type="OptimWrapper",
            optimizer=dict(
                type="SGD",
                lr=float(hp["lr"]),
                momentum=float(hp["momentum"]),
                weight_decay=float(hp["weight_decay"]),
            ),
        ),
        param_scheduler=param_scheduler,
        auto_scale_lr=dict(enable=False, base_batch_size=int(hp["batch_size"])),
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=int(hp["log_interval"])),
            param_scheduler=dict(type="ParamSchedulerHook"),
            # The final weights are published as a plain state_dict by train.py; the
            # per-epoch training states (optimizer, schedulers, loop position) only
            # serve to resume, and are deleted after the run.
            checkpoint=(
                dict(
                    type="CheckpointHook",
                    interval=1,
                    by_epoch=True,
                    max_keep_ckpts=2,
                    save_last=True,
                )
                if resume_checkpoints
                else None
            ),
            sampler_seed=dict(type="DistSamplerSeedHook"),
            visualization=dict(type="DetVisualizationHook"),
        ),
        env_cfg=dict(
            cudnn_benchmark=False,
            mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
            dist_cfg=dict(backend="nccl"),
        ),
        visualizer=dict(type="DetLocalVisualizer", vis_backends=vis_backends, name="visualizer"),
        log_processor=dict(type="LogProcessor", window_size=int(hp["log_interval"]), by_epoch=True),
        log_level="INFO",
        load_from=None,
        resume=False,
        randomness=dict(seed=int(seed), deterministic=False),
    )


def build_mmdet_config(hp: Mapping[str, Any], **kwargs: Any):
    """:func:`mmdet_config_dict` as an ``mmengine.config.Config``."""
    from mmengine.config import Config

    return Config(mmdet_config_dict(hp, **kwargs))


def _folder(path: str) -> str:
    path = str(path)
    return path if path.endswith("/") else path + "/"
