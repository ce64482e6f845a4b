"""The synthetic scenes for dense tasks: masks and boxes agree with what is drawn."""
import pytest
import torch

from vlgen.data.scenes import BACKGROUND, ShapeScenes


def test_scenes_are_deterministic_and_well_formed():
    scenes = ShapeScenes(64, 20, max_shapes=3)
    first, again = scenes[7], scenes[7]
    assert all(torch.equal(first[k], again[k]) for k in first)
    counts = set()
    for i in range(len(scenes)):
        item = scenes[i]
        assert item["x"].shape == (3, 64, 64) and item["mask"].shape == (64, 64)
        assert item["boxes"].shape == (len(item["labels"]), 4) and 1 <= len(item["labels"]) <= 3
        counts.add(len(item["labels"]))
        ids = set(item["mask"].unique().tolist())
        assert ids <= {BACKGROUND} | {c + 1 for c in item["labels"].tolist()}
        for box, label in zip(item["boxes"], item["labels"].tolist()):
            x0, y0, x1, y1 = box.tolist()
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            inside = item["mask"][int(y0):int(y1) + 1, int(x0):int(x1) + 1]
            assert (inside == label + 1).sum() >= 4  # the shape is visible inside its box
        for class_id in ids - {BACKGROUND}:  # every labelled pixel lies in a box of its class
            ys, xs = torch.nonzero(item["mask"] == class_id, as_tuple=True)
            boxes = item["boxes"][item["labels"] == class_id - 1]
            within = ((xs[:, None] + 0.5 >= boxes[:, 0]) & (xs[:, None] + 0.5 <= boxes[:, 2])
                      & (ys[:, None] + 0.5 >= boxes[:, 1]) & (ys[:, None] + 0.5 <= boxes[:, 3])).any(1)
            assert within.all()
    assert len(counts) > 1  # scenes hold different numbers of shapes


def test_scene_errors():
    with pytest.raises(ValueError, match="at least 32 pixels"):
        ShapeScenes(16)
    with pytest.raises(ValueError, match="must be positive"):
        ShapeScenes(64, max_shapes=0)


def test_a_class_subset_draws_only_those_shapes_with_ids_by_position():
    scenes = ShapeScenes(32, 40, classes=("square", "circle"))
    assert scenes.class_names == ("square", "circle") and scenes.num_classes == 2
    labels = torch.cat([scenes[i]["labels"] for i in range(len(scenes))])
    assert set(labels.tolist()) == {0, 1}
    square = next(scenes[i] for i in range(len(scenes)) if scenes[i]["labels"].tolist() == [0])
    x0, y0 = square["boxes"][0, :2].ceil().int().tolist()  # the pixels wholly inside the box
    x1, y1 = square["boxes"][0, 2:].floor().int().tolist()
    assert (square["mask"][y0:y1, x0:x1] == 1).float().mean() > 0.95  # a square fills its box (a circle ~0.8)
    with pytest.raises(ValueError, match="distinct names"):
        ShapeScenes(32, classes=("square", "hexagon"))
    with pytest.raises(ValueError, match="distinct names"):
        ShapeScenes(32, classes=("square", "square"))
