"""`vlgen fid`'s guard rails: bad devices and inputs named before any network loads, labels far
from uniform, a reference of another resolution, fewer than 50,000 images, and the sampling
settings an npz recorded beside it."""
import json

import numpy as np
import pytest

from vlgen.commands.cli import main
from vlgen.evaluation import metrics as metrics_module
from vlgen.evaluation.inception import save_random_inception_weights
from vlgen.evaluation.metrics import label_skew


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_random_inception_weights(tmp_path_factory.mktemp("inception") / "random-inception.pth")


def write_npz(path, count=12, size=32, labels=None, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"arr_0": rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)}
    if labels is not None:
        arrays["arr_1"] = np.asarray(labels)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("device, message", [("tpu", "--device tpu: not a device; use auto, cpu, cuda or cuda:N"),
                                             ("meta", "--device meta: vlgen fid runs on cpu or cuda"),
                                             ("cuda:7", "--device cuda:7: this machine has")])
def test_a_bad_device_is_one_line_naming_the_flag(device, message, tmp_path, capsys):
    write_npz(tmp_path / "a.npz")
    assert main(["fid", str(tmp_path / "a.npz"), "--metrics", "isc", "--device", device]) == 2
    err = capsys.readouterr().err
    assert f"vlgen fid: error: {message}" in err and "Traceback" not in err


@pytest.mark.parametrize("case", ["missing generated", "generated not an npz", "missing reference"])
def test_inputs_are_checked_before_any_network_is_loaded(case, tmp_path, capsys, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a network was loaded before the inputs were checked")

    monkeypatch.setattr(metrics_module, "InceptionFeatures", no_network)
    write_npz(tmp_path / "good.npz")
    (tmp_path / "text.npz").write_text("not an npz")
    generated, reference, expected = {
        "missing generated": ("nowhere.npz", "good.npz", "npz file {root}/nowhere.npz does not exist"),
        "generated not an npz": ("text.npz", "good.npz", "text.npz is not an npz file"),
        "missing reference": ("good.npz", "ref.npz", "reference file {root}/ref.npz does not exist"),
    }[case]
    assert main(["fid", str(tmp_path / generated), str(tmp_path / reference)]) == 2
    assert expected.format(root=tmp_path) in capsys.readouterr().err


def test_labels_far_from_uniform_are_named(tmp_path):
    rng = np.random.default_rng(0)
    assert label_skew(write_npz(tmp_path / "u.npz", labels=rng.integers(0, 10, 5000))) is None
    assert label_skew(write_npz(tmp_path / "b.npz", labels=np.arange(5000) % 10)) is None
    assert label_skew(write_npz(tmp_path / "one.npz", labels=np.full(12, 3))) == "every sample has class 3"
    skewed = np.concatenate([np.zeros(4000, int), rng.integers(0, 10, 1000)])
    assert "class counts range from" in label_skew(write_npz(tmp_path / "s.npz", labels=skewed))
    assert label_skew(write_npz(tmp_path / "none.npz")) is None  # other tools' npz files carry no labels


@pytest.mark.slow
def test_the_set_and_the_reference_are_checked_and_the_sampling_record_is_shown(weights, tmp_path, capsys):
    generated = write_npz(tmp_path / "samples.npz", labels=np.zeros(12, int))
    record = {"pipeline": "/models/dit", "settings": {"protocol": "dit", "sampler": "ddpm", "num_inference_steps": 250,
                                                      "guidance_scale": 1.5, "guided_channels": 3, "dtype": "float32",
                                                      "tf32": False, "class_labels": "random"}}
    (tmp_path / "samples.json").write_text(json.dumps(record))
    reference = tmp_path / "VIRTUAL_imagenet256_labeled.npz"
    np.savez(reference, mu=np.zeros(2048), sigma=np.eye(2048))
    common = [str(generated), str(reference), "--inception-weights", str(weights), "--device", "cpu"]
    assert main(["fid", *common]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[0] == ("sampled with protocol dit: sampler ddpm, num_inference_steps 250, guidance_scale "
                                       "1.5, guided_channels 3, dtype float32, tf32 False, class_labels random (from "
                                       "/models/dit)")
    assert "generated images are 32x32 and reference images 256x256" in out.err
    assert "this is FID-0.012K, not FID-50K" in out.err
    assert "labels are far from uniform (every sample has class 0)" in out.err
    assert main(["fid", *common, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sampling"] == record
