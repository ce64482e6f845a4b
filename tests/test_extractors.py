"""FD-DINOv2 and CMMD through torch-fidelity's DINOv2 and CLIP extractors, with tiny random networks
standing in for the real ones (no download): FD-DINOv2 equals torch-fidelity's own computation on
the same images, and CMMD's MMD matches its closed form."""
import math

import numpy as np
import pytest
import torch
import torch_fidelity
from PIL import Image
from torch import nn

from vlgen.evaluation import evaluate
from vlgen.evaluation.extractors import clip_embeddings, rbf_mmd


def tiny_dinov2(*args, **kwargs):
    """Stands for torch.hub.load("facebookresearch/dinov2", "dinov2_vitl14"): (N, 3, 224, 224) -> (N, 4),
    the same weights at every load."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 14, stride=14), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 4))


def write_folder(path, seed, low, high, count=12):
    path.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(low, high, (32, 32, 3), dtype=np.uint8)).save(path / f"{i:03d}.png")
    return path


@pytest.fixture
def folders(tmp_path):
    """Two sets of different brightness: their distance is far from zero."""
    return write_folder(tmp_path / "generated", 1, 0, 256), write_folder(tmp_path / "reference", 2, 100, 140)


def test_fd_dinov2_equals_torch_fidelitys_own_computation(folders, monkeypatch):
    monkeypatch.setattr(torch.hub, "load", tiny_dinov2)
    generated, reference = folders
    ours = evaluate(generated, reference, "fd_dinov2", batch_size=5, cache_dir=None, progress=False)
    theirs = torch_fidelity.calculate_metrics(input1=str(generated), input2=str(reference), fid=True,
                                              feature_extractor="dinov2-vit-l-14", batch_size=5, cuda=False,
                                              verbose=False, cache=False)
    assert ours["num_images"] == 12 and ours["fd_dinov2"] > 0
    assert ours["fd_dinov2"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-6)


def test_reference_features_are_cached_by_source_and_network(folders, monkeypatch, tmp_path):
    loads = []
    monkeypatch.setattr(torch.hub, "load", lambda *a, **k: loads.append(1) or tiny_dinov2())
    generated, reference = folders
    first = evaluate(generated, reference, "fd_dinov2", cache_dir=tmp_path / "cache", progress=False)
    assert len(list((tmp_path / "cache").glob("*-dinov2.npy"))) == 1
    assert evaluate(generated, reference, "fd_dinov2", cache_dir=tmp_path / "cache", progress=False) == first


def test_statistics_only_references_are_refused_for_dinov2(folders, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "load", tiny_dinov2)
    np.savez(tmp_path / "stats.npz", mu=np.zeros(4), sigma=np.eye(4))
    with pytest.raises(ValueError, match="holds statistics only, but dinov2-vit-l-14 features need the reference images"):
        evaluate(folders[0], tmp_path / "stats.npz", "fd_dinov2", cache_dir=None, progress=False)


def test_cmmd_is_the_scaled_rbf_mmd_of_its_closed_form():
    a, b = torch.zeros(5, 3), torch.zeros(7, 3)
    b[:, 0] = math.sqrt(50.0)  # |a - b|^2 = 50
    assert rbf_mmd(a, a) == pytest.approx(0.0, abs=1e-9)
    assert rbf_mmd(a, b) == pytest.approx(1000 * (2 - 2 * math.exp(-50 / 200)), rel=1e-8)
    x, y = torch.randn(13, 4, generator=torch.Generator().manual_seed(0)), torch.randn(9, 4)
    assert rbf_mmd(x, y, block=3) == pytest.approx(rbf_mmd(x, y), rel=1e-10)  # blocks change nothing
    embeddings = clip_embeddings(np.array([[3.0, 4.0], [0.0, 2.0]]))
    np.testing.assert_allclose(embeddings, [[0.6, 0.8], [0.0, 1.0]])


def test_cmmd_runs_through_torch_fidelitys_clip_extractor(folders, monkeypatch, tmp_path):
    from torch_fidelity import feature_extractor_clip

    torch.manual_seed(0)
    tiny = feature_extractor_clip.CLIPVisual(embed_dim=4, image_resolution=28, vision_layers=1, vision_width=64,
                                             vision_patch_size=14)
    state = {**tiny.state_dict(), "text_projection": torch.zeros(8, 4)}

    class Archive:  # what torch.jit.load gives for the TorchScript file
        def state_dict(self):
            return dict(state)

    monkeypatch.setattr(torch.jit, "load", lambda *args, **kwargs: Archive())
    (tmp_path / "clip.pt").write_bytes(b"stands for the TorchScript file")
    generated, reference = folders
    results = evaluate(generated, reference, "cmmd", cache_dir=None, progress=False, clip_weights=tmp_path / "clip.pt")
    same = evaluate(reference, reference, "cmmd", cache_dir=None, progress=False, clip_weights=tmp_path / "clip.pt")
    assert results["cmmd"] > 0 and same["cmmd"] == pytest.approx(0.0, abs=1e-9)
