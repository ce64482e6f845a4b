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

With --resolutions, the last checkpoint of every run also samples at those image sizes, scored by a
judge trained on real images of each size (OUT/judge-<size>px/): VisionLLaMA blocks with AS2DRoPE
(positions scaled to the training grid) and with unscaled RoPE, plain DiT blocks with their sin-cos
table computed for the new grid. Scores: OUT/runs/<model>/seed-<s>/resolution_scores.json, a second
table in results.md and OUT/resolutions.png.
"""
import json
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from vlgen.pipelines import load_pipeline
from vlgen.commands.export import export_checkpoint
from vlgen.commands.comparison_report import (resolutions_plot, results_plot, results_table, summarise,
                                              summarise_resolutions)
from vlgen.commands.judging import (REAL_IMAGES_SEED, judge_scores, load_judge, real_images, sample_classes,
                                    train_judge)
from vlgen.commands.small_runs import OBJECTIVES
from vlgen.core.atomic import atomic_path
from vlgen.core.output_dir import open_resumable
from vlgen.data.images import ImageDataset
from vlgen.data.shapes import ShapesDataset
from vlgen.models import VisionLLaMADenoiser
from vlgen.training import load_config, train
from vlgen.training.build import build_model, check_config
from vlgen.training.checkpoint import checkpoint_step, list_checkpoints
from vlgen.training.distributed import agreed_mixed_precision

SETTINGS_FILE, RESULTS_FILE, SCORES_FILE = "compare.json", "results.json", "scores.json"
RESOLUTION_SCORES_FILE = "resolution_scores.json"
# How each block type places tokens at a grid it was not trained on: (label, denoiser config values).
POSITION_ENCODINGS = {
    "llama": [("AS2DRoPE", {"rope_auto_scale": True}), ("RoPE, unscaled", {"rope_auto_scale": False})],
    "dit": [("sin-cos for the grid", {})],
}
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


def parse_arm(text):
    """'LABEL=KEY=VALUE,KEY=VALUE' -> (LABEL, ['KEY=VALUE', ...]), or a ValueError naming the problem."""
    label, _, overrides = text.partition("=")
    # A comma starts a new item only before KEY=: values may hold commas, e.g. train.betas=[0.9,0.95].
    items = [item.strip() for item in re.split(r",(?=\s*[\w.]+=)", overrides) if item.strip()]
    if not label.strip() or not items or not all("=" in item for item in items):
        raise ValueError(f"--arm {text!r}: expected LABEL=KEY=VALUE[,KEY=VALUE...], e.g. "
                         "'SiT-LLaMA+REPA=model.name=SiT-LLaMA-S/2,repa.encoder=runs/classifier'")
    if not any(item.startswith("model.name=") for item in items):
        raise ValueError(f"--arm {text!r} names no model: add model.name=NAME (`vlgen models`)")
    return label.strip(), items


def comparison_settings(args):
    """What the results depend on: every argument but where they go, --overwrite and --threads. An
    entry of settings["models"] is a label, whose config values are settings["arms"][label]."""
    settings = {key: value for key, value in sorted(vars(args).items())
                if key not in ("out", "overwrite", "func", "command", "threads", "arm")}
    models = parse_list(args.models, str, "--models") if args.models else []
    if not args.models and not args.arm:
        models = parse_list(default_models(args.objective), str, "--models")
    arms = {model: [f"model.name={model}"] for model in models}
    for label, items in map(parse_arm, args.arm):
        if label in arms:
            raise ValueError(f"--arm label {label!r} is used twice (or is also in --models): give each arm its own")
        arms[label] = items
    settings["models"], settings["arms"] = list(arms), arms
    settings["seeds"] = parse_list(args.seeds, int, "--seeds")
    settings["resolutions"] = parse_list(args.resolutions, int, "--resolutions") if args.resolutions else []
    return settings


def _check_args(args, settings):
    for name in ("steps", "eval_every", "batch_size", "classifier_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.samples_per_class < 2:
        raise ValueError(f"--samples-per-class must be at least 2 (the distance needs covariances), "
                         f"got {args.samples_per_class}")
    if not 0 < args.target_accuracy <= 1:
        raise ValueError(f"--target-accuracy must be in (0, 1], got {args.target_accuracy}")
    if args.resolution in settings["resolutions"]:
        raise ValueError(f"--resolutions lists the training resolution {args.resolution}, which is always scored; "
                         "list only other sizes")
    if args.eval_data and args.data == "shapes":
        raise ValueError("--eval-data is for image folders (--data DIR); shapes draw their own held-out images")


def run_label(model):
    """A model name or arm label as a directory name: DiT-LLaMA-S/2 -> DiT-LLaMA-S-2."""
    return model.replace("/", "-").replace(" ", "_")


def run_config(settings, model, seed, out):
    """The training config of one (model, seed): the same for every model but its arm's values."""
    objective, _ = OBJECTIVES[settings["objective"]]
    data = (["data.kind=shapes", "data.num_samples=20000"] if settings["data"] == "shapes"
            else ["data.kind=images", f"data.path={json.dumps(settings['data'])}"])
    return load_config(None, [
        f"model.hidden_size={settings['hidden_size']}", f"model.depth={settings['depth']}",
        f"model.num_heads={settings['num_heads']}",
        *(f"objective.{key}={value}" for key, value in objective.items()),
        *data, f"data.resolution={settings['resolution']}",
        f"train.global_batch_size={settings['batch_size']}", f"train.max_steps={settings['steps']}",
        f"train.lr={settings['lr']}", "train.warmup_steps=100", f"train.seed={seed}",
        f'train.mixed_precision="{settings["precision"]}"',
        f"logging.output_dir={json.dumps(str(out / 'runs' / run_label(model) / f'seed-{seed}'))}",
        "logging.log_every=25", f"logging.checkpoint_every={settings['eval_every']}", "logging.keep_checkpoints=null",
        "logging.sample_every=0", "logging.tracker=null",
        *settings["overrides"], *settings["arms"][model],
    ])


class RealData:
    """The real images of a comparison: what the judge learns, its held-out set, and the real images
    the generated ones are measured against (and a second real set: the distance's floor)."""

    def __init__(self, settings, resolution=None):
        self.resolution = resolution = resolution or settings["resolution"]
        self.per_class = settings["samples_per_class"]
        if settings["data"] == "shapes":
            self.training = ShapesDataset(resolution, JUDGE_SHAPES, seed=REAL_IMAGES_SEED + 3)
            self.held_out = ShapesDataset(resolution, HELD_OUT_SHAPES, seed=REAL_IMAGES_SEED + 1)
            count = self.per_class * ShapesDataset.num_classes
            self.reference = real_images(ShapesDataset(resolution, count, seed=REAL_IMAGES_SEED), count)
            self.second_reference = real_images(ShapesDataset(resolution, count, seed=REAL_IMAGES_SEED + 2), count)
        else:
            self.training = ImageDataset(settings["data"], resolution)
            self.held_out = ImageDataset(settings["eval_data"], resolution) if settings["eval_data"] else None
            count = self.per_class * self.training.num_classes
            self.reference = real_images(self.held_out or self.training, count)
            self.second_reference = None  # a folder has no second independent set of the same size
        self.num_classes = self.training.num_classes


def count_parameters(config, num_classes):
    """The denoiser's parameters (training-only parts, like a REPA projector, are not counted)."""
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = build_model(config.model, {"size": config.data.resolution, "channels": 3,
                                           "class_names": [str(c) for c in range(num_classes)]})
    return sum(p.numel() for p in model.parameters())


@contextmanager
def exported(checkpoint):
    """A pipeline directory of the EMA weights of checkpoint, removed after the block."""
    with tempfile.TemporaryDirectory(dir=checkpoint.parent.parent) as staging:
        yield export_checkpoint(checkpoint, Path(staging) / "pipeline")


def score_pipeline(pipeline, judge, data, settings, seed, device, position_encoding=None):
    """The judge's scores of samples drawn at data's resolution from a pipeline directory, its
    denoiser built with the position_encoding config values."""
    transformer = VisionLLaMADenoiser.from_pretrained(Path(pipeline) / "transformer", **(position_encoding or {}))
    pipe = load_pipeline(pipeline, transformer=transformer).to(device)
    pipe.set_progress_bar_config(disable=True)
    _, sampler = OBJECTIVES[settings["objective"]]
    generated, labels = sample_classes(pipe, sampler, data.num_classes, data.per_class, settings["guidance_scale"],
                                       seed, data.resolution)
    scores = judge_scores(judge, generated, labels, data.reference)
    return {"class_accuracy": scores["class_accuracy"], "feature_frechet_distance": scores["feature_frechet_distance"]}


def read_json(path):
    return json.loads(path.read_text()) if path.is_file() else {}


def write_json(path, value):
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(value, indent=2))


def judge_for(out, data, settings, accelerator):
    """(judge, held-out accuracy) of data's resolution: the one trained before in out, or a new one."""
    directory = out / ("judge" if data.resolution == settings["resolution"] else f"judge-{data.resolution}px")
    earlier = load_judge(directory)
    if earlier is not None:
        print(f"judge: loaded from {directory} (held-out accuracy {earlier[1]})")
        judge, held_out_accuracy = earlier
    else:
        print(f"judge: a VisionLLaMA classifier on real {data.resolution}px images, {settings['classifier_steps']} "
              "steps")
        judge, held_out_accuracy = train_judge(data.training, data.held_out, data.resolution,
                                               settings["classifier_steps"], settings["seeds"][0], directory,
                                               accelerator)
    return judge.to(accelerator.device), held_out_accuracy


def train_and_score(config, settings, seed, judge, data, device):
    """Trains one run to its end (resuming it) and scores its checkpoints; returns {step: scores}."""
    run_dir = Path(config.logging.output_dir)
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints or checkpoint_step(checkpoints[-1]) < settings["steps"]:
        print(f"  training to step {settings['steps']}")
        train(config, resume="latest")
    scores = {int(step): value for step, value in read_json(run_dir / SCORES_FILE).items()}
    for checkpoint in list_checkpoints(run_dir):
        step = checkpoint_step(checkpoint)
        if step % settings["eval_every"] and step != settings["steps"]:
            continue  # written by a stop signal: not an evaluation point
        if step not in scores:
            with exported(checkpoint) as pipeline:
                scores[step] = score_pipeline(pipeline, judge, data, settings, seed, device)
            write_json(run_dir / SCORES_FILE, {str(s): scores[s] for s in sorted(scores)})
        print(f"  step {step}: class accuracy {scores[step]['class_accuracy']:.3f}, feature distance "
              f"{scores[step]['feature_frechet_distance']:.2f}")
    return scores


def score_resolutions(run_dir, settings, seed, trained_scores, judges, device):
    """The last checkpoint sampled at every other resolution with each position encoding of its
    block type; returns {encoding: {resolution: scores}} (resolutions as strings, as JSON keeps
    them). At the trained size every encoding places tokens as in training, so there each takes
    trained_scores, the run's own score of that checkpoint."""
    path = run_dir / RESOLUTION_SCORES_FILE
    scores = read_json(path)
    last = list_checkpoints(run_dir)[-1]
    encodings = POSITION_ENCODINGS[VisionLLaMADenoiser.load_config(last / "ema")["block_type"]]
    for encoding, _ in encodings:
        scores.setdefault(encoding, {})[str(settings["resolution"])] = trained_scores
    missing = [(encoding, values, judge, data) for encoding, values in encodings for judge, data in judges
               if str(data.resolution) not in scores[encoding]]
    if missing:  # a resumed comparison exports only a checkpoint that still has sizes to score
        with exported(last) as pipeline:
            for encoding, values, judge, data in missing:
                scores[encoding][str(data.resolution)] = score_pipeline(pipeline, judge, data, settings, seed, device,
                                                                        values)
                write_json(path, scores)
    for encoding, by_resolution in scores.items():
        for resolution in sorted(by_resolution, key=int):
            cell = by_resolution[resolution]
            print(f"  {resolution}px, {encoding}: class accuracy {cell['class_accuracy']:.3f}, feature "
                  f"distance {cell['feature_frechet_distance']:.2f}")
    return scores


def run_comparison(args):
    """Trains and scores every (model, seed), then writes the results; returns results.json's content."""
    from accelerate import Accelerator

    settings = comparison_settings(args)
    _check_args(args, settings)
    out = Path(args.out)
    precision = agreed_mixed_precision(args.mixed_precision)
    settings["precision"] = precision
    configs = {(model, seed): run_config(settings, model, seed, out)
               for model in settings["models"] for seed in settings["seeds"]}
    for config in configs.values():  # every name and value checked before anything is written
        check_config(config)
    data = RealData(settings)
    other_sizes = [RealData(settings, resolution) for resolution in settings["resolutions"]]
    resuming = open_resumable(out, settings, SETTINGS_FILE, RESULTS_FILE, args.overwrite, "comparison")
    if resuming:
        print(f"resuming the unfinished comparison in {out}")
    accelerator = Accelerator(mixed_precision=precision)
    started = time.perf_counter()
    judge, judge_accuracy = judge_for(out, data, settings, accelerator)

    scores = {model: {} for model in settings["models"]}
    for number, ((model, seed), config) in enumerate(configs.items(), 1):
        print(f"[run {number}/{len(configs)}] {model} seed {seed}")
        scores[model][seed] = train_and_score(config, settings, seed, judge, data, accelerator.device)

    floor = None
    if data.second_reference is not None:
        labels = torch.arange(data.num_classes).repeat(data.per_class)
        floor = judge_scores(judge, data.second_reference, labels, data.reference)["feature_frechet_distance"]
    parameters = {model: count_parameters(configs[model, settings["seeds"][0]], data.num_classes)
                  for model in settings["models"]}
    results = summarise(settings, scores, parameters, judge_accuracy, floor)

    if other_sizes:
        judges = [(judge_for(out, size, settings, accelerator)[0], size) for size in other_sizes]
        by_size = {model: {} for model in settings["models"]}
        for number, ((model, seed), config) in enumerate(configs.items(), 1):
            print(f"[other resolutions {number}/{len(configs)}] {model} seed {seed}")
            by_size[model][seed] = score_resolutions(Path(config.logging.output_dir), settings, seed,
                                                     scores[model][seed][settings["steps"]], judges,
                                                     accelerator.device)
        results["resolutions"] = summarise_resolutions(settings, by_size)
        resolutions_plot(results, out / "resolutions.png")

    results["seconds_this_invocation"] = time.perf_counter() - started
    (out / "results.md").write_text(results_table(results))
    results_plot(results, out / "results.png")
    write_json(out / RESULTS_FILE, results)  # written last: it marks the comparison finished
    print(results_table(results))
    print(f"written: {out}/results.md, results.png{', resolutions.png' if other_sizes else ''}, results.json")
    return results
