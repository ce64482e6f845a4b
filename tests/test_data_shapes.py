"""The shapes dataset: deterministic, balanced, any resolution, shapes that stand out."""
import torch

from vlgen.data.shapes import BACKGROUND_LEVEL_LIMIT, CLASS_NAMES, MIN_CONTRAST, ShapesDataset


def test_shapes_are_deterministic_balanced_and_any_resolution():
    for resolution in (8, 16, 48):
        dataset = ShapesDataset(resolution, num_samples=30)
        item = dataset[(7, False)]
        assert item["x"].shape == (3, resolution, resolution) and item["y"] == 7
        assert -1 <= item["x"].min() < item["x"].max() <= 1
        assert torch.equal(item["x"], ShapesDataset(resolution, 30)[(7, False)]["x"])
    dataset = ShapesDataset(32, num_samples=100)
    assert [dataset[(i, False)]["y"] for i in range(100)] == [i % 10 for i in range(100)]
    assert len(CLASS_NAMES) == dataset.num_classes == 10
    flipped = dataset[(3, True)]["x"]
    assert torch.equal(flipped, torch.flip(dataset[(3, False)]["x"], dims=[-1]))
    assert not torch.equal(dataset[(3, False)]["x"], ShapesDataset(32, 100, seed=1)[(3, False)]["x"])


def test_shapes_classes_differ_in_their_masks():
    """Each class covers a different mean area fraction pattern: the ten mean masks are distinct."""
    dataset = ShapesDataset(32, num_samples=400)
    masks = torch.zeros(10, 32, 32)
    for i in range(400):
        x = dataset[(i, False)]["x"]
        background = x[:, 0, 0][:, None, None]
        masks[i % 10] += ((x - background).abs().sum(0) > 0.3).float() / 40
    distances = torch.cdist(masks.flatten(1), masks.flatten(1))
    assert distances[~torch.eye(10, dtype=torch.bool)].min() > 1.0


def test_shapes_stand_out_from_dark_backgrounds():
    dataset = ShapesDataset(32, num_samples=50)
    for i in range(50):
        x = (dataset[(i, False)]["x"] + 1) * 255 / 2  # back to 0..255
        background = x[:, 0, 0]  # the corner is outside every shape
        assert (background < BACKGROUND_LEVEL_LIMIT).all(), (i, background)
        assert (x - background[:, None, None]).abs().sum(0).max() >= MIN_CONTRAST - 1e-3  # a pixel fully inside
