"""Object detection: a VisionLLaMA backbone (pyramid, or plain with the simple feature pyramid)
plus torchvision's FeaturePyramidNetwork, plugged into torchvision's Faster R-CNN. Evaluation is
COCO box mAP by pycocotools.

Class ids here are the dataset's, 0 ... num_classes - 1; torchvision's id 0 is the background, so
they are shifted by one on the way in and out.
"""
import contextlib
import io
from collections import OrderedDict

import numpy as np
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from vlgen.tasks.fitting import batches, fit
from vlgen.tasks.multiscale import create_multiscale_backbone

# For images of a few objects (e.g. ShapeScenes): torchvision's defaults keep 2,000 proposals per
# image and sample 512 of them, most of the training time at 64 px.
SMALL_IMAGE_OPTIONS = dict(rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100, rpn_pre_nms_top_n_test=100,
                           rpn_post_nms_top_n_test=50, rpn_batch_size_per_image=64, box_batch_size_per_image=64,
                           box_detections_per_img=20)
ANCHORS_PER_STRIDE = 4  # anchor side = 4 x the level's stride (torchvision's FPN default is 8x, for COCO's larger objects)


class DetectionBackbone(nn.Module):
    """What torchvision's detectors expect: forward(images) -> OrderedDict of FPN maps ("0".."3",
    "pool") with `out_channels` channels each."""

    def __init__(self, backbone_type, backbone_config, out_channels):
        super().__init__()
        self.body = create_multiscale_backbone(backbone_type, backbone_config)
        self.fpn = FeaturePyramidNetwork(self.body.out_channels, out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels
        self.strides = [*self.body.strides, 2 * self.body.strides[-1]]
        self.in_channels = getattr(self.body, "backbone", self.body).config.in_channels

    def forward(self, images):
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(images))))


def create_detector(num_classes, backbone_type="pyramid", backbone_config=None, image_size=224, fpn_channels=64,
                    box_head_size=256, **faster_rcnn_options):
    """A torchvision FasterRCNN on a VisionLLaMA backbone.

    Args:
        num_classes: object classes, background excluded.
        backbone_type: "pyramid" (PyramidVisionLLaMA) or "plain" (VisionLLaMA with a simple
            feature pyramid).
        backbone_config: the backbone's constructor arguments.
        image_size: the side of the square images in [-1, 1] (no resizing, no extra normalisation).
        fpn_channels: channels of the feature pyramid.
        box_head_size: width of the box head's MLP.
        **faster_rcnn_options: passed to FasterRCNN (e.g. fewer proposals for small images:
            SMALL_IMAGE_OPTIONS).

    Returns:
        FasterRCNN: in training mode, forward(images, targets) returns losses; in eval mode,
        forward(images) returns boxes, labels and scores per image.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
    backbone = DetectionBackbone(backbone_type, {"image_size": image_size, **(backbone_config or {})}, fpn_channels)
    anchors = AnchorGenerator(tuple((ANCHORS_PER_STRIDE * s,) for s in backbone.strides),
                              ((0.5, 1.0, 2.0),) * len(backbone.strides))
    resolution = 7  # the RoI pooler's output size (torchvision's default)
    return FasterRCNN(backbone, num_classes=None, min_size=image_size, max_size=image_size,
                      image_mean=[0.0] * 3, image_std=[1.0] * 3, rpn_anchor_generator=anchors,
                      box_head=TwoMLPHead(fpn_channels * resolution ** 2, box_head_size),
                      box_predictor=FastRCNNPredictor(box_head_size, num_classes + 1), **faster_rcnn_options)


def check_images(images, channels):
    """Images (N, channels, H, W): torchvision's normalisation would otherwise broadcast a
    1-channel image to 3 channels without a word."""
    if images.ndim != 4 or images.shape[1] != channels:
        raise ValueError(f"expected images of shape (N, {channels}, H, W), got {tuple(images.shape)}")


def check_targets(images, boxes, labels, num_classes):
    """Boxes (K, 4) xyxy inside their image with positive size, labels (K,) in [0, num_classes)."""
    for index, (image, box, label) in enumerate(zip(images, boxes, labels)):
        height, width = image.shape[-2:]
        if box.ndim != 2 or box.shape[-1] != 4 or label.shape != box.shape[:1]:
            raise ValueError(f"image {index}: boxes must be (K, 4) with K labels, got {tuple(box.shape)} boxes and "
                             f"{tuple(label.shape)} labels")
        outside = (box[:, 0] < 0) | (box[:, 1] < 0) | (box[:, 2] > width) | (box[:, 3] > height)
        empty = (box[:, 2] <= box[:, 0]) | (box[:, 3] <= box[:, 1])
        if (outside | empty).any():
            k = int((outside | empty).nonzero()[0])
            raise ValueError(f"image {index}: box {k} {box[k].tolist()} is {'empty' if empty[k] else 'outside'} the "
                             f"{width}x{height} image; boxes are (x0, y0, x1, y1) pixels with 0 <= x0 < x1 <= width, "
                             "0 <= y0 < y1 <= height: clip them or drop them")
        if ((label < 0) | (label >= num_classes)).any():
            raise ValueError(f"image {index}: labels {label.tolist()} out of range [0, {num_classes})")


def _collate(items):
    """Images stacked; boxes and labels as lists (their counts differ per image)."""
    return (torch.stack([item["x"] for item in items]), [item["boxes"] for item in items],
            [item["labels"] for item in items])


def detection_loss(model, images, boxes, labels, num_classes, channels):
    """Sum of Faster R-CNN's four training losses (RPN and box head, classification and regression)."""
    check_images(images, channels)
    check_targets(images, boxes, labels, num_classes)
    targets = [{"boxes": box, "labels": label + 1} for box, label in zip(boxes, labels)]
    return sum(model(list(images), targets).values())


def _num_classes(model):
    return model.roi_heads.box_predictor.cls_score.out_features - 1


def train_detector(model, dataset, *, steps=300, batch_size=8, lr=1e-3, weight_decay=0.05, warmup_steps=20, seed=0,
                   num_workers=0, accelerator=None, progress=True):
    """Train on dataset items {"x", "boxes" (K, 4) xyxy, "labels" (K,)} (e.g. ShapeScenes). Returns the losses."""
    num_classes, channels = _num_classes(model), model.backbone.in_channels
    if num_classes != dataset.num_classes:
        raise ValueError(f"the detector has {num_classes} classes, the dataset {dataset.num_classes}")
    return fit(model, batches(dataset, _collate, batch_size, shuffle=True, seed=seed, num_workers=num_workers),
               lambda m, batch: detection_loss(m, *batch, num_classes, channels), steps=steps, lr=lr,
               weight_decay=weight_decay, warmup_steps=warmup_steps, seed=seed, accelerator=accelerator,
               progress=progress, desc="detector")


@torch.no_grad()
def detect(model, images):
    """Per image a dict of "boxes" (K, 4) xyxy, "scores" (K,), "labels" (K,) dataset class ids."""
    check_images(images, model.backbone.in_channels)
    model.eval()
    device = next(model.parameters()).device
    return [{"boxes": d["boxes"].cpu(), "scores": d["scores"].cpu(), "labels": d["labels"].cpu() - 1}
            for d in model(list(images.to(device)))]


def coco_box_map(predictions, targets, num_classes):
    """COCO box AP (pycocotools): {"map": AP@[.5:.95], "map_50": AP@.5, "map_75": AP@.75}.
    predictions: detect()'s dicts; targets: dicts of "boxes", "labels" for the same images."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(box):
        return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]

    annotations = []
    for i, target in enumerate(targets):
        for box, label in zip(target["boxes"], target["labels"]):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": int(label), "bbox": xywh(box),
                                "area": float((box[2] - box[0]) * (box[3] - box[1])), "iscrowd": 0})
    truth = COCO()
    truth.dataset = {"images": [{"id": i} for i in range(len(targets))], "annotations": annotations,
                     "categories": [{"id": c} for c in range(num_classes)]}
    results = [{"image_id": i, "category_id": int(label), "bbox": xywh(box), "score": float(score)}
               for i, p in enumerate(predictions) for box, label, score in zip(p["boxes"], p["labels"], p["scores"])]
    if not results:
        return {"map": 0.0, "map_50": 0.0, "map_75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary table
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = np.maximum(evaluation.stats, 0.0)  # -1 means "no such objects": report 0
    return {"map": float(stats[0]), "map_50": float(stats[1]), "map_75": float(stats[2])}


def evaluate_detector(model, dataset, batch_size=16, num_workers=0):
    """COCO box mAP of model on every item of dataset."""
    num_classes = _num_classes(model)
    predictions, targets = [], []
    for images, boxes, labels in batches(dataset, _collate, batch_size, shuffle=False, seed=0,
                                         num_workers=num_workers):
        check_targets(images, boxes, labels, num_classes)
        predictions += detect(model, images)
        targets += [{"boxes": box, "labels": label} for box, label in zip(boxes, labels)]
    return coco_box_map(predictions, targets, num_classes)
