"""FID evaluation: agreement with torch-fidelity, input routes, reference statistics and caching, errors."""
import json
import urllib.error
from unittest import mock

import numpy as np
import pytest
import torch
import torch_fidelity
from PIL import Image

from vlgen.commands.cli import main
from vlgen.evaluation import InceptionFeatures, evaluate, load_reference, to_uint8
from vlgen.evaluation.images import open_images
from vlgen.evaluation.inception import WEIGHTS_ENV, save_random_inception_weights

# The small test sets draw the "fewer than 50,000 images" warning on purpose; one test checks it.
pytestmark = pytest.mark.filterwarnings("ignore:.*biased upward:UserWarning")



















# -- a random inception-v3-compat network, saved as a local weights file ---------------------------
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_random_inception_weights(tmp_path_factory.mktemp("inception") / "random-inception.pth")


@pytest.fixture(scope="module")
def extractor(weights):
    return InceptionFeatures("cpu", weights)


def write_folder(path, images):
    path.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(path / f"{index:04d}.png")
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    first = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    second = (rng.random((12, 32, 32, 3)) * 160 + 40).astype(np.uint8)
    return write_folder(root / "first", first), write_folder(root / "second", second), first


@pytest.mark.slow
def test_metrics_equal_torch_fidelity_on_the_same_folders(folders, weights, extractor):
    first, second, _ = folders
    ours = evaluate(first, second, "fid,isc,kid", extractor=extractor, cache_dir=None, kid_subset_size=10, progress=False)
    theirs = torch_fidelity.calculate_metrics(
        input1=str(first), input2=str(second), fid=True, isc=True, kid=True, kid_subset_size=10, samples_shuffle=False,
        feature_extractor_weights_path=str(weights), cuda=False, verbose=False, cache=False, save_cpu_ram=True)
    assert ours["fid"] > 1  # distinct sets: the comparison is not 0 == 0
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-6)
    assert ours["inception_score"] == pytest.approx(theirs["inception_score_mean"], rel=1e-9)
    # computed in float64 on the device; torch-fidelity sums its kernels in float32
    assert ours["kid"] == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-6)


@pytest.mark.slow
def test_folder_npz_and_memory_routes_give_identical_features(folders, tmp_path, extractor):
    folder, _, images = folders
    np.savez(tmp_path / "samples.npz", arr_0=images, arr_1=np.arange(len(images)))
    # the same batch size everywhere: batched convolutions round differently for other sizes
    from_folder = extractor.extract(open_images(folder), batch_size=5, progress=False)
    from_npz = extractor.extract(open_images(tmp_path / "samples.npz"), batch_size=5, progress=False)
    from_tensor = extractor.extract(open_images(torch.from_numpy(images).permute(0, 3, 1, 2)), batch_size=5,
                                    progress=False)
    for name in ("pool", "logits", "spatial"):
        assert np.array_equal(from_folder[name], from_npz[name]) and np.array_equal(from_folder[name], from_tensor[name])


def test_float_images_become_uint8_exactly_like_the_png_route(tmp_path, extractor):
    samples = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2.4 - 1.2  # some out of [-1, 1]
    as_uint8 = to_uint8(samples)
    expected = torch.clamp(127.5 * samples + 128.0, 0, 255).to(torch.uint8)
    assert torch.equal(as_uint8, expected)
    folder = write_folder(tmp_path / "png", as_uint8.permute(0, 2, 3, 1).numpy())
    from_png = extractor.extract(open_images(folder), batch_size=3, progress=False)
    from_memory = extractor.extract(open_images(iter(samples.split(3))), progress=False)
    assert np.array_equal(from_png["pool"], from_memory["pool"])


def test_spatial_features_are_the_first_seven_mixed_6_conv_channels_in_nhwc(extractor):
    images = (torch.rand(2, 3, 40, 40) * 255).to(torch.uint8)
    captured = []
    handle = extractor.network.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, out: captured.append(out))
    features = extractor(images)
    handle.remove()
    assert captured[0].shape == (2, 192, 17, 17)
    expected = captured[0][:, :7].permute(0, 2, 3, 1).reshape(2, 17 * 17 * 7)
    assert features["spatial"].shape == (2, 2023) and torch.equal(features["spatial"], expected)


@pytest.mark.slow
def test_adm_reference_batch_statistics_and_images(folders, tmp_path, extractor):
    folder, second, images = folders
    reference = load_reference(second, extractor, need_features=True, cache_dir=None, progress=False)
    adm = tmp_path / "VIRTUAL_ref.npz"
    np.savez(adm, mu=reference["mu"], sigma=reference["sigma"], mu_s=reference["mu_s"], sigma_s=reference["sigma_s"],
             arr_0=np.stack([np.asarray(Image.open(p)) for p in sorted(second.iterdir())]), extra=np.zeros(3))
    from_adm = evaluate(folder, adm, "fid,sfid,kid", extractor=extractor, cache_dir=None, kid_subset_size=10, progress=False)
    from_folder = evaluate(folder, second, "fid,sfid,kid", extractor=extractor, cache_dir=None, kid_subset_size=10,
                           progress=False)
    for name in ("fid", "sfid", "kid"):
        assert from_adm[name] == pytest.approx(from_folder[name], rel=1e-9)
    plain = tmp_path / "plain.npz"
    np.savez(plain, mu=reference["mu"], sigma=reference["sigma"])
    assert evaluate(folder, plain, "fid", extractor=extractor, progress=False)["fid"] == pytest.approx(from_folder["fid"])
    with pytest.raises(ValueError, match="statistics only"):
        evaluate(folder, plain, "kid", extractor=extractor, progress=False)
    with pytest.raises(ValueError, match="spatial reference statistics"):
        evaluate(folder, plain, "sfid", extractor=extractor, progress=False)


@pytest.mark.slow
def test_reference_statistics_are_cached_by_source(folders, tmp_path, extractor):
    _, second, _ = folders
    first = load_reference(second, extractor, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    with mock.patch.object(extractor, "extract", side_effect=AssertionError("cache missed")):
        cached = load_reference(second, extractor, cache_dir=tmp_path, progress=False)
    assert np.array_equal(first["sigma"], cached["sigma"])
    changed = tmp_path / "changed"
    write_folder(changed, [np.asarray(Image.open(p)) for p in sorted(second.iterdir())][:-1])
    load_reference(changed, extractor, cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.npz"))) == 2


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((3, 8, 8, 3), dtype=np.float32), "dtype float32"),
        (np.zeros((3, 8, 8), dtype=np.uint8), "expected \\(N, H, W, 3\\)"),
        (np.zeros((3, 8, 8, 4), dtype=np.uint8), "expected \\(N, H, W, 3\\)"),
    ],
)
def test_bad_npz_images_are_clear_errors(tmp_path, array, message):
    np.savez(tmp_path / "bad.npz", arr_0=array)
    with pytest.raises(ValueError, match=message):
        open_images(tmp_path / "bad.npz")


def test_bad_inputs_are_clear_errors(tmp_path, extractor):
    np.savez(tmp_path / "one.npz", arr_0=np.zeros((1, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="at least 2 generated images"):
        evaluate(tmp_path / "one.npz", metrics="isc", extractor=extractor, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        open_images(tmp_path / "empty")
    np.savez(tmp_path / "stats.npz", mu=np.zeros(10), sigma=np.eye(10))
    np.savez(tmp_path / "two.npz", arr_0=np.zeros((2, 8, 8, 3), dtype=np.uint8) + np.arange(2).reshape(2, 1, 1, 1).astype(np.uint8))
    with pytest.raises(ValueError, match="statistics do not match"):
        evaluate(tmp_path / "two.npz", tmp_path / "stats.npz", extractor=extractor, progress=False)
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate(tmp_path / "two.npz", metrics="fid,lpips", extractor=extractor, progress=False)
    with pytest.raises(ValueError, match="compare against a reference"):
        evaluate(tmp_path / "two.npz", metrics="fid", extractor=extractor, progress=False)


def test_the_reference_is_checked_before_the_generated_set_is_read(tmp_path, folders):
    """At 50K images the generated features take minutes: a bad reference must fail first."""
    first, _, _ = folders

    class Recorder:
        weights_id = "none"
        calls = 0

        def extract(self, *args, **kwargs):
            Recorder.calls += 1
            raise AssertionError("extracted before the reference was checked")

    with pytest.raises(FileNotFoundError, match="reference file .*ref.npz does not exist"):
        evaluate(first, tmp_path / "ref.npz", extractor=Recorder(), progress=False)
    np.savez(tmp_path / "neither.npz", something=np.zeros(3))
    with pytest.raises(ValueError, match="holds neither statistics"):
        evaluate(first, tmp_path / "neither.npz", extractor=Recorder(), progress=False)
    assert Recorder.calls == 0


def test_sets_of_different_image_sizes_draw_a_warning(tmp_path, extractor):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "small.npz", arr_0=rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8))
    np.savez(tmp_path / "large.npz", arr_0=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    with pytest.warns(UserWarning, match="generated images are 16x16 and reference images 32x32"):
        evaluate(tmp_path / "small.npz", tmp_path / "large.npz", extractor=extractor, cache_dir=None, progress=False)


def test_nan_features_are_a_clear_error(folders, extractor):
    folder, second, _ = folders
    nan = {"pool": np.full((3, 2048), np.nan, dtype=np.float32)}
    with mock.patch.object(extractor, "extract", return_value={**nan, "logits": nan["pool"], "spatial": nan["pool"]}):
        with pytest.raises(ValueError, match="NaN or inf"):
            evaluate(folder, second, extractor=extractor, cache_dir=None, progress=False)


@pytest.mark.slow
def test_small_sets_and_jpeg_inputs_warn(tmp_path, folders, extractor):
    _, second, images = folders
    for index, image in enumerate(images[:3]):
        Image.fromarray(image).save(tmp_path / f"{index}.jpg")
    with pytest.warns(UserWarning, match="biased upward below 50,000"), pytest.warns(UserWarning, match="JPEG"):
        evaluate(tmp_path, second, extractor=extractor, cache_dir=None, progress=False)


@pytest.mark.slow
def test_an_uncalibrated_random_network_is_refused_not_scored_near_zero(tmp_path, folders):
    """Random weights without BatchNorm statistics give features near 1e-8: FID ~ 1e-15 for any two
    sets. Such features are refused; the same images pass with the calibrated random network."""
    first, second, _ = folders
    uncalibrated = InceptionFeatures("cpu", save_random_inception_weights(tmp_path / "raw.pth", calibrate=False))
    with pytest.raises(ValueError, match="features of the generated images are nearly zero"):
        evaluate(first, second, extractor=uncalibrated, cache_dir=None, progress=False)


@pytest.mark.slow
def test_one_image_repeated_draws_a_warning(tmp_path, folders, extractor):
    _, second, images = folders
    write_folder(tmp_path / "same", [images[0]] * 4)
    with pytest.warns(UserWarning, match="all 4 generated images give the same Inception features"):
        result = evaluate(tmp_path / "same", second, extractor=extractor, cache_dir=None, progress=False)
    assert result["fid"] > 0


def test_offline_without_weights_names_the_file_and_where_it_goes(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with mock.patch("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url",
                    side_effect=urllib.error.URLError("no network")):
        with pytest.raises(FileNotFoundError) as error:
            InceptionFeatures("cpu")
    message = str(error.value)
    assert "weights-inception-2015-12-05-6726825d.pth" in message and str(tmp_path / "checkpoints") in message
    assert "--inception-weights" in message


def test_weights_from_the_environment_and_unsafe_files_refused(tmp_path, monkeypatch, weights):
    monkeypatch.setenv(WEIGHTS_ENV, str(weights))
    assert InceptionFeatures("cpu").weights_id.startswith(str(weights.resolve()))
    pickled = tmp_path / "object.pth"
    torch.save({"model": mock.sentinel.__class__}, pickled)  # a class reference: not a plain state dict
    monkeypatch.setenv(WEIGHTS_ENV, str(pickled))
    with pytest.raises(ValueError, match="not a plain tensor checkpoint"):
        InceptionFeatures("cpu")


@pytest.mark.slow
@pytest.mark.slow
def test_cli_json_has_torch_fidelitys_keys_and_values_and_the_table_is_for_people(folders, weights, capsys, tmp_path):
    first, second, _ = folders
    common = [str(first), str(second), "--inception-weights", str(weights), "--batch-size", "6", "--cache-dir",
              str(tmp_path / "cache")]
    assert main(["fid", *common, "--metrics", "fid,sfid,isc,kid,prc", "--kid-subset-size", "6", "--json", "--save",
                 str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr()
    ours = json.loads(out.out)
    assert json.loads((tmp_path / "s.json").read_text()) == ours
    theirs = torch_fidelity.calculate_metrics(
        input1=str(first), input2=str(second), fid=True, isc=True, kid=True, prc=True, kid_subset_size=6,
        feature_extractor="inception-v3-compat",  # for prc too (its default is VGG-16; ADM uses Inception)
        batch_size=6,  # the batches of ours: float32 convolutions round differently per batch shape
        samples_shuffle=False, feature_extractor_weights_path=str(weights), cuda=False, verbose=False, cache=False)
    assert set(theirs) <= set(ours) and set(ours) - set(theirs) == {"num_images", "sfid"}
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=1e-6), key
    assert ours["frechet_inception_distance"] > 1 and "biased upward" in out.err and "FID-0.012K" in out.err
    assert main(["fid", *common, "--metrics", "fid,isc"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("num_images") and table[1].startswith("FID-0.012K")


@pytest.mark.parametrize("cuda, device, batch", [(False, "cpu", 50), (True, "cuda", 250)])
def test_fid_defaults_to_the_gpu_and_its_batch_where_there_is_one(monkeypatch, capsys, cuda, device, batch):
    from vlgen.commands import cli
    from vlgen import evaluation

    seen = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(evaluation, "evaluate", lambda *args, **kwargs: seen.update(kwargs) or {"fid": 1.0})
    assert cli.main(["fid", "a.npz", "b.npz"]) == 0
    assert (str(seen["device"]), seen["batch_size"]) == (device, batch)
    assert cli.main(["fid", "a.npz", "b.npz", "--device", "cpu", "--batch-size", "7"]) == 0
    assert (str(seen["device"]), seen["batch_size"]) == ("cpu", 7)
