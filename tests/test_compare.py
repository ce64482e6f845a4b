"""`vlgen compare`: the harness on a tiny budget (every artefact, a killed comparison resumes to the
same result), and its summary arithmetic against hand-computed values."""
import json

import pytest
import torch
from accelerate.state import AcceleratorState
from conftest import Interrupted, tiny_model
from PIL import Image

from vlgen.pipelines import create_pipeline
from vlgen.commands import compare
from vlgen.commands.cli import build_parser, main
from vlgen.commands.compare import RealData, comparison_settings, parse_list, run_config
from vlgen.commands.comparison_report import results_table, summarise, summarise_resolutions
from vlgen.models import VisionLLaMADenoiser

TINY = ["--objective", "ddpm", "--models", "DiT-S/2,DiT-LLaMA-S/2", "--hidden-size", "32", "--depth", "1",
        "--num-heads", "2", "--seeds", "0", "--steps", "4", "--eval-every", "2", "--classifier-steps", "3",
        "--samples-per-class", "2", "--mixed-precision", "no", "--set", "data.num_workers=0",
        "--set", "train.ema_decay=0.5"]


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")  # each test starts without accelerate's state


def interrupt_after_total_steps(monkeypatch, steps):
    """Training dies (as if the process were killed) after `steps` optimisation steps summed over
    every run of the comparison."""
    from vlgen.training.loop import Run

    original, taken = Run.train_step, []

    def train_step(self, batch):
        if len(taken) == steps:
            raise Interrupted
        taken.append(1)
        return original(self, batch)

    monkeypatch.setattr(Run, "train_step", train_step)


@pytest.mark.slow
def test_a_tiny_comparison_writes_every_artefact_and_a_killed_one_resumes_to_the_same_result(tmp_path, monkeypatch,
                                                                                           capsys):
    straight = tmp_path / "straight"
    assert main(["compare", "--out", str(straight), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "[run 1/2] DiT-S/2 seed 0" in printed and "[run 2/2] DiT-LLaMA-S/2 seed 0" in printed

    results = json.loads((straight / "results.json").read_text())
    assert list(results["models"]) == ["DiT-S/2", "DiT-LLaMA-S/2"]
    for model, label in (("DiT-S/2", "DiT-S-2"), ("DiT-LLaMA-S/2", "DiT-LLaMA-S-2")):
        run = straight / "runs" / label / "seed-0"
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
        scores = json.loads((run / "scores.json").read_text())
        entry = results["models"][model]
        assert [row["step"] for row in entry["curve"]] == [2, 4]
        assert [row["class_accuracy"]["per_seed"] for row in entry["curve"]] == [
            [scores["2"]["class_accuracy"]], [scores["4"]["class_accuracy"]]]
        trained = VisionLLaMADenoiser.from_pretrained(run / "checkpoints" / "step-0000004" / "ema")
        assert entry["parameters"] == sum(p.numel() for p in trained.parameters())
        assert trained.config.block_type == ("llama" if "LLaMA" in model else "dit")
    table = (straight / "results.md").read_text()
    assert "| DiT-S/2 |" in table and "| DiT-LLaMA-S/2 |" in table and "| 4 |" in table
    assert Image.open(straight / "results.png").size[0] > 500
    assert 0.0 <= results["judge_held_out_accuracy"] <= 1.0
    assert results["feature_frechet_distance_real_vs_real"] >= 0.0

    killed = tmp_path / "killed"
    with monkeypatch.context() as patch:
        interrupt_after_total_steps(patch, 7)  # the first run finishes; the second dies after its step 3
        with pytest.raises(Interrupted):
            main(["compare", "--out", str(killed), *TINY])
    assert not (killed / "results.json").exists()
    assert json.loads((killed / "runs/DiT-S-2/seed-0/scores.json").read_text()).keys() == {"2", "4"}
    assert [p.name for p in (killed / "runs/DiT-LLaMA-S-2/seed-0/checkpoints").iterdir()] == ["step-0000002"]
    capsys.readouterr()

    AcceleratorState._reset_state(reset_partial_state=True)
    other = [arg if arg != "4" else "6" for arg in TINY]  # --steps 6
    assert main(["compare", "--out", str(killed), *other]) == 2
    assert "unfinished comparison with other settings (steps: 4 there, 6 now)" in capsys.readouterr().err

    AcceleratorState._reset_state(reset_partial_state=True)
    assert main(["compare", "--out", str(killed), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "resuming the unfinished comparison" in printed and "judge: loaded from" in printed
    finished_run = printed.split("[run 1/2] DiT-S/2 seed 0")[1].split("[run 2/2]")[0]
    assert "training to step" not in finished_run and "resumed from step 2" in printed
    resumed = json.loads((killed / "results.json").read_text())
    assert resumed["models"] == results["models"]  # every score equal to the uninterrupted comparison's

    AcceleratorState._reset_state(reset_partial_state=True)
    assert main(["compare", "--out", str(killed), *TINY]) == 2  # a finished comparison is kept unless --overwrite
    assert "pass --overwrite" in capsys.readouterr().err


def _settings(*extra):
    return comparison_settings(build_parser().parse_args(["compare", *TINY, *extra]))


def test_every_run_has_the_same_config_but_its_model_and_seed(tmp_path):
    settings = {**_settings(), "precision": "no"}
    first = run_config(settings, "DiT-S/2", 0, tmp_path).to_dict()
    second = run_config(settings, "DiT-LLaMA-S/2", 1, tmp_path).to_dict()
    assert first["model"].pop("name") == "DiT-S/2" and second["model"].pop("name") == "DiT-LLaMA-S/2"
    assert first["train"].pop("seed") == 0 and second["train"].pop("seed") == 1
    assert first["logging"].pop("output_dir") == str(tmp_path / "runs" / "DiT-S-2" / "seed-0")
    second["logging"].pop("output_dir")
    assert first == second
    assert first["objective"]["noise_schedule"] == "cosine" and first["logging"]["checkpoint_every"] == 2
    assert first["model"]["hidden_size"] == 32 and first["train"]["ema_decay"] == 0.5  # --set reaches every run
    assert first["logging"]["keep_checkpoints"] is None  # every scored checkpoint stays


def test_an_arm_is_a_labelled_run_with_its_own_config_values(tmp_path):
    settings = {**_settings("--arm", "qk=model.name=DiT-LLaMA-S/2, model.qk_norm=true,model.norm=rmsnorm"),
                "precision": "no"}
    assert settings["models"][-1] == "qk" and settings["arms"]["DiT-S/2"] == ["model.name=DiT-S/2"]
    plain, arm = (run_config(settings, label, 0, tmp_path).to_dict() for label in ("DiT-LLaMA-S/2", "qk"))
    assert arm["logging"]["output_dir"] == str(tmp_path / "runs" / "qk" / "seed-0")
    assert (arm["model"]["qk_norm"], arm["model"]["norm"]) == (True, "rmsnorm")
    for config in (plain, arm):
        config["logging"].pop("output_dir")
        config["model"].pop("qk_norm"), config["model"].pop("norm")
    assert plain == arm  # every other value as the plain run's, --set included
    assert _settings("--models", "", "--arm", "a=model.name=SiT-S/2")["models"] == ["a"]  # --arm alone
    betas = _settings("--arm", "b=model.name=SiT-S/2,train.betas=[0.9, 0.95],train.lr=2e-4")["arms"]["b"]
    assert betas == ["model.name=SiT-S/2", "train.betas=[0.9, 0.95]", "train.lr=2e-4"]  # a value's commas stay
    assert run_config({**settings, "arms": {"b": betas}, "models": ["b"]}, "b", 0, tmp_path).train.betas == (0.9, 0.95)


def test_the_default_models_compare_the_plain_block_with_the_visionllama_block():
    assert comparison_settings(build_parser().parse_args(["compare"]))["models"] == ["SiT-S/2", "SiT-LLaMA-S/2"]
    args = build_parser().parse_args(["compare", "--objective", "ddpm", "--seeds", "3, 5"])
    settings = comparison_settings(args)
    assert settings["models"] == ["DiT-S/2", "DiT-LLaMA-S/2"] and settings["seeds"] == [3, 5]


def test_bad_comparison_arguments_are_clear_errors(tmp_path, capsys):
    out = ["--out", str(tmp_path / "c")]
    for args, message in [(["--steps", "0"], "--steps must be a positive integer"),
                          (["--eval-every", "0"], "--eval-every must be a positive integer"),
                          (["--samples-per-class", "1"], "--samples-per-class must be at least 2"),
                          (["--seeds", "0,0"], "expected a comma-separated list of distinct values"),
                          (["--seeds", "a"], "--seeds 'a': expected a comma-separated list"),
                          (["--target-accuracy", "1.5"], "--target-accuracy must be in (0, 1]"),
                          (["--eval-data", str(tmp_path)], "--eval-data is for image folders"),
                          (["--resolutions", "12,16"], "--resolutions lists the training resolution 16"),
                          (["--models", "DiT-S/2,DiT-Q/2"], "unknown model 'DiT-Q/2'"),
                          (["--set", "train.nope=1"], "unknown config key train.nope"),
                          (["--arm", "x"], "expected LABEL=KEY=VALUE"),
                          (["--arm", "x=repa.block=2"], "names no model"),
                          (["--arm", "a=model.name=SiT-S/2", "--arm", "a=model.name=SiT-S/2"], "is used twice"),
                          (["--arm", "x=model.name=SiT-S/2,model.norm=batchnorm"], "model.norm")]:
        assert main(["compare", *out, *args]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # refused before anything is written
    with pytest.raises(ValueError, match="expected a comma-separated list"):
        parse_list(" , ", str, "--models")


def _scores(values):
    """{step: {"class_accuracy": a, "feature_frechet_distance": d}} from {step: (a, d)}."""
    return {step: {"class_accuracy": a, "feature_frechet_distance": d} for step, (a, d) in values.items()}


def test_the_summary_gives_mean_spread_and_the_first_step_reaching_the_target():
    settings = {"models": ["A", "B"], "seeds": [0, 1, 2], "target_accuracy": 0.8, "steps": 20}
    scores = {"A": {0: _scores({10: (0.7, 5.0), 20: (0.9, 2.0)}), 1: _scores({10: (0.8, 7.0), 20: (0.8, 3.0)}),
                    2: _scores({10: (0.9, 6.0), 20: (1.0, 4.0)})},
              "B": {0: _scores({10: (0.1, 9.0), 20: (0.5, 8.0)}), 1: _scores({10: (0.2, 9.0), 20: (0.6, 8.0)}),
                    2: _scores({10: (0.3, 9.0), 20: (0.7, 8.0)})}}
    results = summarise(settings, scores, {"A": 100, "B": 120}, 0.99, 0.5)
    first = results["models"]["A"]["curve"][0]
    assert first["step"] == 10
    assert first["class_accuracy"]["mean"] == pytest.approx(0.8)
    assert first["class_accuracy"]["std"] == pytest.approx(0.1)  # sample standard deviation of 0.7, 0.8, 0.9
    assert first["feature_frechet_distance"]["min"] == 5.0 and first["feature_frechet_distance"]["max"] == 7.0
    assert results["models"]["A"]["step_reaching_target"] == 10  # mean 0.8 at step 10
    assert results["models"]["B"]["step_reaching_target"] is None  # mean 0.6 at most
    table = results_table({**results, "settings": {**settings, "target_accuracy": 0.8}})
    assert "| A | 100 | 0.900 ± 0.100 | 3.00 ± 1.00 | 10 |" in table
    assert "| B | 120 | 0.600 ± 0.100 | 8.00 ± 0.00 | not reached by 20 |" in table


def test_an_image_folder_is_the_judge_s_data_and_the_reference(tmp_path):
    for name, colour in (("cats", (255, 0, 0)), ("dogs", (0, 0, 255))):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (20, 20), colour).save(tmp_path / "data" / name / f"{i}.png")
    settings = _settings("--data", str(tmp_path / "data"), "--samples-per-class", "3")
    data = RealData(settings)
    assert data.num_classes == 2 and data.held_out is None and data.second_reference is None
    assert data.reference.shape == (6, 3, 16, 16)
    red = data.reference[:, 0].mean(dim=(1, 2)) > 0  # both classes are in the reference set
    assert 0 < int(red.sum()) < 6
    config = run_config({**settings, "precision": "no"}, "DiT-S/2", 0, tmp_path)
    assert config.data.kind == "images" and config.data.path == str(tmp_path / "data")
    too_many = _settings("--data", str(tmp_path / "data"), "--samples-per-class", "6")
    with pytest.raises(ValueError, match="need 12 real images"):
        RealData(too_many)


def test_the_judge_starts_from_its_seed_whatever_ran_before(tmp_path):
    from accelerate import Accelerator

    from vlgen.commands.judging import train_judge
    from vlgen.data.shapes import ShapesDataset

    judges = []
    for name, draws in (("a", 1), ("b", 7)):
        torch.rand(draws)  # other work consumed the global random stream differently
        judge, accuracy = train_judge(ShapesDataset(16, 64, seed=1), None, 16, steps=2, seed=5, out=tmp_path / name,
                                      accelerator=Accelerator(cpu=True))
        assert accuracy is None  # no held-out set given
        judges.append(judge.state_dict())
    assert judges[0].keys() == judges[1].keys() and all(torch.equal(judges[0][k], judges[1][k]) for k in judges[0])


@pytest.mark.slow
def test_other_resolutions_are_scored_by_a_judge_of_each_size_with_every_position_encoding(tmp_path, capsys):
    out = tmp_path / "sizes"
    assert main(["compare", "--out", str(out), *TINY, "--resolutions", "12,24"]) == 0
    assert "[other resolutions 2/2] DiT-LLaMA-S/2 seed 0" in capsys.readouterr().out
    assert (out / "judge-12px" / "metrics.json").is_file() and (out / "judge-24px" / "metrics.json").is_file()
    llama = json.loads((out / "runs/DiT-LLaMA-S-2/seed-0/resolution_scores.json").read_text())
    dit = json.loads((out / "runs/DiT-S-2/seed-0/resolution_scores.json").read_text())
    assert set(llama) == {"AS2DRoPE", "RoPE, unscaled"} and set(dit) == {"sin-cos for the grid"}
    assert all(set(by_size) == {"12", "16", "24"} for by_size in (*llama.values(), *dit.values()))
    results = json.loads((out / "results.json").read_text())
    cell = results["resolutions"]["DiT-LLaMA-S/2"]["RoPE, unscaled"]["24"]["class_accuracy"]
    assert cell["per_seed"] == [llama["RoPE, unscaled"]["24"]["class_accuracy"]]
    table = (out / "results.md").read_text()
    assert "| DiT-LLaMA-S/2 | AS2DRoPE |" in table and "16px (trained)" in table
    assert Image.open(out / "resolutions.png").size[0] > 500


def test_each_position_encoding_reaches_the_sampled_denoiser(tmp_path, monkeypatch):
    """Unscaled RoPE and AS2DRoPE sample the same images at the trained grid and different ones at
    another: the encoding is applied, not only named."""
    pipe = create_pipeline(tiny_model("DiT-LLaMA-S/2", in_channels=3), {"kind": "ddpm"}, [str(c) for c in range(10)])
    pipe.save_pretrained(tmp_path / "pipeline")
    sampled = []
    monkeypatch.setattr(compare, "judge_scores", lambda judge, generated, labels, real: sampled.append(generated) or
                        {"class_accuracy": 0.0, "feature_frechet_distance": 0.0})
    monkeypatch.setitem(compare.OBJECTIVES, "ddpm", ({}, {"sampler": "ddim", "num_inference_steps": 4}))
    settings = {**_settings(), "samples_per_class": 2}
    for resolution in (16, 24):
        data = RealData(settings, resolution)
        for encoding in compare.POSITION_ENCODINGS["llama"]:
            compare.score_pipeline(tmp_path / "pipeline", None, data, settings, 0, "cpu", encoding[1])
    trained_scaled, trained_unscaled, other_scaled, other_unscaled = sampled
    assert trained_scaled.shape[-1] == 16 and other_scaled.shape[-1] == 24
    assert torch.equal(trained_scaled, trained_unscaled)
    assert not torch.allclose(other_scaled, other_unscaled, atol=1e-3)


def test_the_resolution_summary_is_per_model_encoding_and_size():
    settings = {"models": ["A"], "seeds": [0, 1]}
    cell = lambda a, d: {"class_accuracy": a, "feature_frechet_distance": d}  # noqa: E731
    scores = {"A": {0: {"AS2DRoPE": {"24": cell(0.5, 4.0), "8": cell(0.1, 9.0)}},
                    1: {"AS2DRoPE": {"24": cell(0.7, 6.0), "8": cell(0.3, 7.0)}}}}
    summary = summarise_resolutions(settings, scores)
    assert list(summary["A"]["AS2DRoPE"]) == ["8", "24"]  # ascending sizes, not string order
    assert summary["A"]["AS2DRoPE"]["24"]["class_accuracy"]["mean"] == pytest.approx(0.6)
    assert summary["A"]["AS2DRoPE"]["8"]["feature_frechet_distance"]["std"] == pytest.approx(2 ** 0.5)
