"""`vlgen compare`: denoiser configurations trained on the same data with the same budget, seeds and
evaluation, through the real training loop, and scored as `vlgen demo` scores its model.

Every (model, seed) is an ordinary training run that checkpoints every --eval-every steps. The EMA
weights of each checkpoint are exported, sampled class by class and scored by one judge (a
classifier trained once on real images): class accuracy and judge-feature Frechet distance. A
killed comparison resumes when run again with the same arguments: finished runs and scores are
kept, an unfinished run continues from its newest checkpoint.

    OUT/compare.json                   the settings
    OUT/judge/                         the judge and its held-out accuracy
    OUT/runs/<model>/seed-<s>/         training run directories (vlgen train's layout)
    OUT/runs/<model>/seed-<s>/scores.json   the scores of its checkpoints, by step
    OUT/results.json, results.md, results.png   the table and plot (mean and spread over seeds);
                                       results.json is written last and marks the comparison finished
"""
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipelines import load_pipeline
from vlgen.commands.export import export_checkpoint
from vlgen.commands.judging import (REAL_IMAGES_SEED, judge_scores, load_judge, real_images, sample_classes,
                                    train_judge)
from vlgen.commands.small_runs import OBJECTIVES
from vlgen.core.atomic import atomic_path
from vlgen.core.output_dir import open_resumable
from vlgen.data.images import ImageFolderDataset
from vlgen.data.shapes import ShapesDataset
from vlgen.training import load_config, train
from vlgen.training.build import build_model, check_config
from vlgen.training.checkpoint import checkpoint_step, list_checkpoints
from vlgen.training.loop import agreed_mixed_precision

SETTINGS_FILE, RESULTS_FILE, SCORES_FILE = "compare.json", "results.json", "scores.json"
JUDGE_SHAPES = 50000  # shapes the judge learns from (drawn on the fly)
HELD_OUT_SHAPES = 1000


def parse_list(text, convert, option):
    """'a,b' -> [convert(a), convert(b)], or a ValueError naming the option."""
    try:
        items = [convert(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected a comma-separated list") from None
    if not items or len(set(items)) != len(items):
        raise ValueError(f"{option} {text!r}: expected a comma-separated list of distinct values")
    return items


def default_models(objective):
    """The comparison the toolkit exists for: the plain block against the VisionLLaMA block."""
    family = "DiT" if objective == "ddpm" else "SiT"
    return f"{family}-S/2,{family}-LLaMA-S/2"


def comparison_settings(args):
    """What the results depend on: every argument but where they go, --overwrite and --threads."""
    settings = {key: value for key, value in sorted(vars(args).items())
                if key not in ("out", "overwrite", "func", "command", "threads")}
    settings["models"] = parse_list(args.models or default_models(args.objective), str, "--models")
    settings["seeds"] = parse_list(args.seeds, int, "--seeds")
    return settings


def _check_args(args):
    for name in ("steps", "eval_every", "batch_size", "classifier_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.samples_per_class < 2:
        raise ValueError(f"--samples-per-class must be at least 2 (the distance needs covariances), "
                         f"got {args.samples_per_class}")
    if not 0 < args.target_accuracy <= 1:
        raise ValueError(f"--target-accuracy must be in (0, 1], got {args.target_accuracy}")
    if args.eval_data and args.data == "shapes":
        raise ValueError("--eval-data is for image folders (--data DIR); shapes draw their own held-out images")


def run_label(model):
    """A model name as a directory name: DiT-LLaMA-S/2 -> DiT-LLaMA-S-2."""
    return model.replace("/", "-")


def run_config(settings, model, seed, out):
    """The training config of one (model, seed): the same for every model but its name."""
    objective, _ = OBJECTIVES[settings["objective"]]
    data = (["data.kind=shapes", "data.num_samples=20000"] if settings["data"] == "shapes"
            else ["data.kind=images", f"data.path={json.dumps(settings['data'])}"])
    return load_config(None, [
        f"model.name={model}", f"model.hidden_size={settings['hidden_size']}", f"model.depth={settings['depth']}",
        f"model.num_heads={settings['num_heads']}",
        *(f"objective.{key}={value}" for key, value in objective.items()),
        *data, f"data.resolution={settings['resolution']}",
        f"train.global_batch_size={settings['batch_size']}", f"train.max_steps={settings['steps']}",
        f"train.lr={settings['lr']}", "train.warmup_steps=100", f"train.seed={seed}",
        f'train.mixed_precision="{settings["precision"]}"',
        f"logging.output_dir={json.dumps(str(out / 'runs' / run_label(model) / f'seed-{seed}'))}",
        "logging.log_every=25", f"logging.checkpoint_every={settings['eval_every']}", "logging.keep_checkpoints=null",
        "logging.sample_every=0", "logging.tracker=null",
        *settings["overrides"],
    ])


class RealData:
    """The real images of a comparison: what the judge learns, its held-out set, and the real images
    the generated ones are measured against (and a second real set: the distance's floor)."""

    def __init__(self, settings):
        resolution, self.per_class = settings["resolution"], settings["samples_per_class"]
        if settings["data"] == "shapes":
            self.training = ShapesDataset(resolution, JUDGE_SHAPES, seed=REAL_IMAGES_SEED + 3)
            self.held_out = ShapesDataset(resolution, HELD_OUT_SHAPES, seed=REAL_IMAGES_SEED + 1)
            count = self.per_class * ShapesDataset.num_classes
            self.reference = real_images(ShapesDataset(resolution, count, seed=REAL_IMAGES_SEED), count)
            self.second_reference = real_images(ShapesDataset(resolution, count, seed=REAL_IMAGES_SEED + 2), count)
        else:
            self.training = ImageFolderDataset(settings["data"], resolution)
            self.held_out = ImageFolderDataset(settings["eval_data"], resolution) if settings["eval_data"] else None
            count = self.per_class * self.training.num_classes
            self.reference = real_images(self.held_out or self.training, count)
            self.second_reference = None  # a folder has no second independent set of the same size
        self.num_classes = self.training.num_classes


def count_parameters(config, num_classes):
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = build_model(config.model, {"size": config.data.resolution, "channels": 3,
                                           "class_names": [str(c) for c in range(num_classes)]})
    return sum(p.numel() for p in model.parameters())


def score_checkpoint(checkpoint, judge, data, settings, seed, device):
    """The judge's scores of the EMA weights of one checkpoint."""
    with tempfile.TemporaryDirectory(dir=checkpoint.parent.parent) as staging:
        pipeline = export_checkpoint(checkpoint, Path(staging) / "pipeline")
        pipe = load_pipeline(pipeline).to(device)
    pipe.set_progress_bar_config(disable=True)
    _, sampler = OBJECTIVES[settings["objective"]]
    generated, labels = sample_classes(pipe, sampler, data.num_classes, data.per_class, settings["guidance_scale"],
                                       seed)
    scores = judge_scores(judge, generated, labels, data.reference)
    return {"class_accuracy": scores["class_accuracy"], "feature_frechet_distance": scores["feature_frechet_distance"]}


def read_scores(run_dir):
    path = run_dir / SCORES_FILE
    return {int(step): value for step, value in json.loads(path.read_text()).items()} if path.is_file() else {}


def write_scores(run_dir, scores):
    with atomic_path(run_dir / SCORES_FILE) as temporary:
        temporary.write_text(json.dumps({str(step): scores[step] for step in sorted(scores)}, indent=2))


def summarise(settings, scores, parameters, judge_accuracy, floor):
    """results.json's content: per model and evaluated step, the mean, standard deviation, minimum
    and maximum over seeds of both metrics, and the first step whose mean accuracy reaches the
    target (None: not within the budget)."""
    models = {}
    for model in settings["models"]:
        by_seed = scores[model]
        steps = sorted(set.intersection(*(set(s) for s in by_seed.values())))
        curve = []
        for step in steps:
            row = {"step": step}
            for metric in ("class_accuracy", "feature_frechet_distance"):
                values = np.array([by_seed[seed][step][metric] for seed in settings["seeds"]])
                row[metric] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1
                               else 0.0, "min": float(values.min()), "max": float(values.max()),
                               "per_seed": values.tolist()}
            curve.append(row)
        # Rounded: a mean of accuracies (multiples of 1 / images) that equals the target may differ in the last bit.
        reached = [row["step"] for row in curve
                   if round(row["class_accuracy"]["mean"], 9) >= settings["target_accuracy"]]
        models[model] = {"parameters": parameters[model], "curve": curve,
                         "step_reaching_target": reached[0] if reached else None}
    return {"settings": settings, "judge_held_out_accuracy": judge_accuracy,
            "feature_frechet_distance_real_vs_real": floor, "models": models}


def _mean_std(cell, digits):
    return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"


def results_table(results):
    """results.md: a summary line per model, then every evaluated step."""
    settings = results["settings"]
    target, seeds = settings["target_accuracy"], len(settings["seeds"])
    lines = [f"| model | parameters | class accuracy at step {settings['steps']} | feature distance at step "
             f"{settings['steps']} | first step with mean accuracy >= {target:g} |", "|---|---:|---:|---:|---:|"]
    for model, entry in results["models"].items():
        last = entry["curve"][-1]
        reached = entry["step_reaching_target"]
        lines.append(f"| {model} | {entry['parameters']:,} | {_mean_std(last['class_accuracy'], 3)} | "
                     f"{_mean_std(last['feature_frechet_distance'], 2)} | "
                     f"{reached if reached is not None else 'not reached by ' + str(settings['steps'])} |")
    lines += ["", f"Mean ± standard deviation over {seeds} seed{'s' if seeds > 1 else ''} "
                  f"({', '.join(map(str, settings['seeds']))}).", "",
              "| step | " + " | ".join(f"{m} accuracy | {m} distance" for m in results["models"]) + " |",
              "|---:|" + "---:|---:|" * len(results["models"])]
    steps = [row["step"] for row in next(iter(results["models"].values()))["curve"]]
    for i, step in enumerate(steps):
        cells = []
        for entry in results["models"].values():
            row = entry["curve"][i]
            cells += [_mean_std(row["class_accuracy"], 3), _mean_std(row["feature_frechet_distance"], 2)]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines += ["", f"Judge held-out accuracy on real images: {results['judge_held_out_accuracy']}."]
    if results["feature_frechet_distance_real_vs_real"] is not None:
        lines.append(f"Feature distance between two real sets of the same size: "
                     f"{results['feature_frechet_distance_real_vs_real']:.2f}.")
    return "\n".join(lines) + "\n"


def results_plot(results, path):
    """Class accuracy and feature distance against steps: the mean over seeds, shaded from the
    lowest to the highest seed."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for model, entry in results["models"].items():
        steps = [row["step"] for row in entry["curve"]]
        for axis, metric in zip(axes, ("class_accuracy", "feature_frechet_distance")):
            cells = [row[metric] for row in entry["curve"]]
            line, = axis.plot(steps, [c["mean"] for c in cells], marker="o", label=f"{model} "
                              f"({entry['parameters'] / 1e6:.2f}M)")
            axis.fill_between(steps, [c["min"] for c in cells], [c["max"] for c in cells], alpha=0.2,
                              color=line.get_color())
    settings = results["settings"]
    axes[0].axhline(settings["target_accuracy"], color="grey", linestyle=":", label="target")
    axes[0].set(xlabel="training step", ylabel="class accuracy (judge)", ylim=(0, 1))
    axes[1].set(xlabel="training step", ylabel="judge-feature Frechet distance", yscale="log")
    if results["feature_frechet_distance_real_vs_real"] is not None:
        axes[1].axhline(results["feature_frechet_distance_real_vs_real"], color="grey", linestyle=":",
                        label="real vs real")
    for axis in axes:
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"{settings['objective']} objective, {len(settings['seeds'])} seeds, batch "
                    f"{settings['batch_size']}, {settings['resolution']}px {settings['data']}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _judge(out, data, settings, accelerator):
    earlier = load_judge(out / "judge")
    if earlier is not None:
        print(f"judge: loaded from {out / 'judge'} (held-out accuracy {earlier[1]})")
        return earlier
    print(f"judge: a VisionLLaMA classifier on real {settings['resolution']}px images, "
          f"{settings['classifier_steps']} steps")
    return train_judge(data.training, data.held_out, settings["resolution"], settings["classifier_steps"],
                       settings["seeds"][0], out / "judge", accelerator)


def run_comparison(args):
    """Trains and scores every (model, seed), then writes the results; returns results.json's content."""
    from accelerate import Accelerator

    _check_args(args)
    settings = comparison_settings(args)
    out = Path(args.out)
    precision = agreed_mixed_precision(args.mixed_precision)
    settings["precision"] = precision
    configs = {(model, seed): run_config(settings, model, seed, out)
               for model in settings["models"] for seed in settings["seeds"]}
    for config in configs.values():  # every name and value checked before anything is written
        check_config(config)
    data = RealData(settings)
    resuming = open_resumable(out, settings, SETTINGS_FILE, RESULTS_FILE, args.overwrite, "comparison")
    if resuming:
        print(f"resuming the unfinished comparison in {out}")
    accelerator = Accelerator(mixed_precision=precision)
    started = time.perf_counter()
    judge, judge_accuracy = _judge(out, data, settings, accelerator)
    judge.to(accelerator.device)

    scores = {model: {} for model in settings["models"]}
    for number, ((model, seed), config) in enumerate(configs.items(), 1):
        run_dir = Path(config.logging.output_dir)
        checkpoints = list_checkpoints(run_dir)
        done = bool(checkpoints) and checkpoint_step(checkpoints[-1]) >= settings["steps"]
        print(f"[run {number}/{len(configs)}] {model} seed {seed}: "
              + ("trained" if done else f"training to step {settings['steps']}"))
        if not done:
            train(config, resume="latest")
        run_scores = read_scores(run_dir)
        for checkpoint in list_checkpoints(run_dir):
            step = checkpoint_step(checkpoint)
            if step not in run_scores:
                run_scores[step] = score_checkpoint(checkpoint, judge, data, settings, seed, accelerator.device)
                write_scores(run_dir, run_scores)
            print(f"  step {step}: class accuracy {run_scores[step]['class_accuracy']:.3f}, feature distance "
                  f"{run_scores[step]['feature_frechet_distance']:.2f}")
        scores[model][seed] = run_scores

    floor = None
    if data.second_reference is not None:
        labels = torch.arange(data.num_classes).repeat(data.per_class)
        floor = judge_scores(judge, data.second_reference, labels, data.reference)["feature_frechet_distance"]
    parameters = {model: count_parameters(configs[model, settings["seeds"][0]], data.num_classes)
                  for model in settings["models"]}
    results = summarise(settings, scores, parameters, judge_accuracy, floor)
    results["seconds_this_invocation"] = time.perf_counter() - started
    (out / "results.md").write_text(results_table(results))
    results_plot(results, out / "results.png")
    with atomic_path(out / RESULTS_FILE) as temporary:  # written last: it marks the comparison finished
        temporary.write_text(json.dumps(results, indent=2))
    print(results_table(results))
    print(f"written: {out}/results.md, results.png, results.json")
    return results
