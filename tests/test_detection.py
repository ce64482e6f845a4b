"""Detection: VisionLLaMA backbones in torchvision's Faster R-CNN, target checks, COCO mAP."""
import pytest
import torch

from vlgen.tasks.detection import (SMALL_IMAGE_OPTIONS, check_targets, coco_box_map, create_detector, detect,
                                   detection_loss, evaluate_detector, train_detector)
from vlgen.data.scenes import ShapeScenes

PYRAMID = dict(embed_dims=(16, 32, 32, 48), num_heads=(1, 2, 2, 3), depths=(1, 1, 2, 1), window_sizes=(4, 4, 4, 4))
PLAIN = dict(patch_size=8, hidden_size=32, depth=2, num_heads=2)


@pytest.mark.parametrize("backbone, config", [("pyramid", PYRAMID), ("plain", PLAIN)])
def test_training_losses_and_detections_for_both_backbones(backbone, config):
    model = create_detector(3, backbone, config, image_size=64, fpn_channels=16, box_head_size=32,
                            **SMALL_IMAGE_OPTIONS)
    assert model.backbone.strides == ([4, 8, 16, 32, 64] if backbone == "pyramid" else [2, 4, 8, 16, 32])
    scenes = ShapeScenes(64, 2, classes=("circle", "square", "triangle"))
    images = torch.stack([scenes[i]["x"] for i in range(2)])
    boxes, labels = [scenes[i]["boxes"] for i in range(2)], [scenes[i]["labels"] for i in range(2)]
    model.train()
    losses = model(list(images), [{"boxes": b, "labels": l + 1} for b, l in zip(boxes, labels)])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = detection_loss(model, images, boxes, labels, 3, 3)
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in model.backbone.body.parameters())
    detections = detect(model, images)
    assert len(detections) == 2 and all(d["boxes"].shape[-1] == 4 for d in detections)
    assert all(((d["labels"] >= 0) & (d["labels"] < 3)).all() for d in detections)  # dataset ids, not torchvision's


def test_coco_map_of_perfect_wrong_and_shifted_predictions():
    targets = [{"boxes": torch.tensor([[10.0, 10, 30, 30], [40, 5, 60, 25]]), "labels": torch.tensor([0, 2])},
               {"boxes": torch.tensor([[0.0, 0, 20, 40]]), "labels": torch.tensor([1])}]
    perfect = [dict(t, scores=torch.ones(len(t["labels"]))) for t in targets]
    assert coco_box_map(perfect, targets, 3) == {"map": pytest.approx(1.0), "map_50": pytest.approx(1.0),
                                                 "map_75": pytest.approx(1.0)}
    wrong_class = [dict(p, labels=(p["labels"] + 1) % 3) for p in perfect]
    assert coco_box_map(wrong_class, targets, 3)["map"] == 0.0
    # Shifted by 1/4 of the box width: IoU 0.6 -> found at IoU 0.5, missed at 0.75.
    shifted = [dict(p, boxes=p["boxes"] + torch.tensor([1.0, 0, 1, 0]) * (p["boxes"][:, 2:3] - p["boxes"][:, :1]) / 4)
               for p in perfect]
    metrics = coco_box_map(shifted, targets, 3)
    assert metrics["map_50"] == pytest.approx(1.0) and metrics["map_75"] == 0.0
    assert coco_box_map([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                          "scores": torch.zeros(0)}] * 2, targets, 3)["map"] == 0.0


def test_bad_targets_and_images_are_clear_errors():
    images = torch.zeros(1, 3, 64, 48)
    with pytest.raises(ValueError, match=r"box 1 \[40.0, 10.0, 50.0, 20.0\] is outside the 48x64 image"):
        check_targets(images, [torch.tensor([[0.0, 0, 10, 10], [40, 10, 50, 20]])], [torch.tensor([0, 1])], 3)
    with pytest.raises(ValueError, match="box 0 .* is empty"):
        check_targets(images, [torch.tensor([[10.0, 10, 10, 20]])], [torch.tensor([0])], 3)
    with pytest.raises(ValueError, match=r"outside .* clip them or drop them"):
        check_targets(images, [torch.tensor([[-2.0, 0, 10, 10]])], [torch.tensor([0])], 3)
    with pytest.raises(ValueError, match=r"labels \[3\] out of range \[0, 3\)"):
        check_targets(images, [torch.tensor([[0.0, 0, 10, 10]])], [torch.tensor([3])], 3)
    with pytest.raises(ValueError, match=r"boxes must be \(K, 4\) with K labels"):
        check_targets(images, [torch.tensor([[0.0, 0, 10, 10]])], [torch.tensor([0, 1])], 3)
    model = create_detector(3, "pyramid", PYRAMID, image_size=64, fpn_channels=16, box_head_size=32)
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 3, H, W\), got \(2, 1, 64, 64\)"):
        detect(model, torch.zeros(2, 1, 64, 64))  # a grey image must not broadcast to 3 channels
    with pytest.raises(ValueError, match="the detector has 3 classes, the dataset 10"):
        train_detector(model, ShapeScenes(64, 4), steps=1)


@pytest.mark.slow
def test_detector_learns_shape_scenes():
    """Plain backbone with the simple feature pyramid, 3 shape classes at 64 px, 250 steps (about
    25 s on 2 cores): measured COCO mAP 0.35, mAP@0.5 0.54."""
    classes = ("circle", "square", "triangle")
    torch.manual_seed(0)
    model = create_detector(3, "plain", dict(patch_size=8, hidden_size=96, depth=3, num_heads=6, layer_scale_init=0.1),
                            image_size=64, fpn_channels=32, box_head_size=128, **SMALL_IMAGE_OPTIONS)
    train_detector(model, ShapeScenes(64, 20000, classes=classes), steps=250, batch_size=8, lr=3e-3, progress=False)
    metrics = evaluate_detector(model, ShapeScenes(64, 200, seed=1, classes=classes))
    assert metrics["map"] > 0.18 and metrics["map_50"] > 0.35, metrics
