"""`vlgen demo`: the toolkit end to end on the built-in shapes dataset, minutes on a CPU.

1. A small VisionLLaMA classifier learns real shapes images: the judge of the generated ones.
2. A small SiT-LLaMA (flow matching; or DiT-LLaMA with DDPM, --framework dit) trains with the real
   training loop (vlgen.training.train: EMA, checkpoints, metrics.jsonl).
3. Its last checkpoint is exported as a pipeline directory (as `vlgen export` does).
4. The pipeline samples every class with classifier-free guidance; the judge scores the samples:
   the share shown as their conditioning class, and the Frechet distance between judge features
   of generated and real images (FID's formula in the judge's feature space, not FID).

OUT/ holds grid.png, loss.png, metrics.json, pipeline/, classifier/ and run/ (training output).
OUT/demo.json records the settings at the start and metrics.json is written last: running the
same command again after an interruption resumes the demo (the judge is loaded, the training
continues from its newest checkpoint); a finished demo is kept unless --overwrite.
"""
import json
import os
import time
from pathlib import Path

import torch

from vlgen.pipelines import labelled_grid, load_pipeline
from vlgen.commands.export import export_checkpoint
from vlgen.commands.judging import (DATA_WORKERS, REAL_IMAGES_SEED, judge_scores, load_judge, real_images,
                                    sample_classes, train_judge)
from vlgen.commands.small_runs import OBJECTIVES, WIDTH
from vlgen.core.atomic import atomic_path
from vlgen.core.output_dir import open_resumable
from vlgen.data.shapes import ShapesDataset
from vlgen.training import load_config, train
from vlgen.training.distributed import agreed_mixed_precision
from vlgen.training.checkpoint import NAME as CHECKPOINT_NAME
from vlgen.training.checkpoint import latest_checkpoint

# Model family and objective kind (vlgen.commands.small_runs.OBJECTIVES: its settings and the
# sampler of the scored samples).
FRAMEWORKS = {"sit": ("SiT-LLaMA-S", "flow"), "dit": ("DiT-LLaMA-S", "ddpm")}  # keys: defaults.DEMO_FRAMEWORKS
TOKENS_PER_SIDE = 8  # denoiser patch = resolution / 8: the same 64 tokens (and step cost) at any resolution
GRID_COLUMNS = 10
GRID_PIXELS = 64  # grid cells are upscaled (nearest) to at least this size to stay visible
CHECKPOINT_EVERY = 500  # denoiser steps between checkpoints: what an interruption can cost
SETTINGS_FILE = "demo.json"  # the arguments of the demo an output directory holds


def _check_args(args):
    for name in ("steps", "batch_size", "classifier_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    if args.samples_per_class < 2:
        raise ValueError(f"--samples-per-class must be at least 2 (the distance needs covariances), "
                         f"got {args.samples_per_class}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible; use --device cpu or auto")


def _select_device(device):
    """accelerate reads this before its first Accelerator: every stage then shares one device."""
    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"


def denoiser_config(args, out, precision):
    family, kind = FRAMEWORKS[args.framework]
    objective, _ = OBJECTIVES[kind]
    patch = args.resolution // TOKENS_PER_SIDE
    return load_config(None, [
        f"model.name={family}/{patch}", *(f"model.{key}={value}" for key, value in WIDTH.items()),
        *(f"objective.{key}={value}" for key, value in objective.items()),
        f"data.resolution={args.resolution}", "data.num_samples=20000", f"data.num_workers={DATA_WORKERS}",
        f"train.global_batch_size={args.batch_size}", f"train.max_steps={args.steps}", f"train.lr={args.lr}",
        "train.warmup_steps=100", f'train.mixed_precision="{precision}"',
        f"train.seed={args.seed}",
        f"logging.output_dir={out / 'run'}", "logging.log_every=25",
        f"logging.checkpoint_every={min(CHECKPOINT_EVERY, args.steps)}", "logging.keep_checkpoints=1",
        "logging.sample_every=0", "logging.tracker=null",
    ])


def demo_settings(args):
    """What a demo's results depend on: every argument but where it goes and --overwrite."""
    return {key: value for key, value in sorted(vars(args).items()) if key not in ("out", "overwrite", "func",
                                                                                   "command")}


def prepare_output(args):
    """(OUT, resuming): a new output directory, or the unfinished demo of the same settings in it."""
    out = Path(args.out)
    return out, open_resumable(out, demo_settings(args), SETTINGS_FILE, "metrics.json", args.overwrite, "demo")


def real_shapes(resolution, per_class, seed):
    """Real shapes, per_class of each class (labels i mod 10)."""
    return real_images(ShapesDataset(resolution, per_class * ShapesDataset.num_classes, seed=seed),
                       per_class * ShapesDataset.num_classes)


def save_grid(images, labels, path):
    from torchvision.transforms.functional import to_pil_image

    scale = max(1, GRID_PIXELS // images.shape[-1])
    rows = []
    for c, name in enumerate(ShapesDataset.class_names):
        cells = images[labels == c][:GRID_COLUMNS]
        cells = torch.nn.functional.interpolate(cells, scale_factor=scale, mode="nearest")
        rows.append((name, [to_pil_image((cell + 1) / 2) for cell in cells.clamp(-1, 1)]))
    labelled_grid(rows).save(path)


def save_loss_curve(metrics_jsonl, path, title):
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines()]
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot([r["step"] for r in records], [r["loss"] for r in records])
    axes.set(xlabel="step", ylabel="training loss (mean of each 25 steps)", title=title, yscale="log")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return records


def run_demo(args):
    """Runs the four stages; writes OUT/ and returns the metrics dict."""
    from accelerate import Accelerator

    _check_args(args)
    out, resuming = prepare_output(args)
    _select_device(args.device)
    precision = agreed_mixed_precision(args.mixed_precision)  # "auto": bf16 only where this machine is faster in it
    config = denoiser_config(args, out, precision)
    accelerator = Accelerator(mixed_precision=precision)
    device = accelerator.device
    started = time.perf_counter()

    earlier_judge = load_judge(out / "classifier") if resuming else None
    checkpoint = latest_checkpoint(out / "run") if resuming else None
    resumed = {"judge": earlier_judge is not None,
               "denoiser_from_step": int(CHECKPOINT_NAME.match(checkpoint.name).group(1)) if checkpoint else 0}
    if resuming:
        print(f"resuming the unfinished demo in {out}: judge {'loaded' if resumed['judge'] else 'trained again'}, "
              f"denoiser from step {resumed['denoiser_from_step']} of {args.steps}")
    if earlier_judge is not None:
        judge, judge_accuracy = earlier_judge
        print(f"[1/4] judge: loaded from {out / 'classifier'} (held-out accuracy {judge_accuracy:.3f})")
    else:
        print(f"[1/4] judge: a VisionLLaMA classifier on real {args.resolution}px shapes ({device})")
        judge, judge_accuracy = train_judge(
            ShapesDataset(args.resolution, 50000, seed=args.seed + 1),
            ShapesDataset(args.resolution, 1000, seed=REAL_IMAGES_SEED + 1), args.resolution, args.classifier_steps,
            args.seed, out / "classifier", accelerator)
    judge_seconds = time.perf_counter() - started

    print(f"[2/4] denoiser: {config.model.name} (width {config.model.hidden_size}, depth {config.model.depth}), "
          f"{config.objective.kind} objective, {args.steps} steps of {args.batch_size}")
    train(config, resume="latest")
    train_seconds = time.perf_counter() - started - judge_seconds
    _, sampler = OBJECTIVES[config.objective.kind]
    records = save_loss_curve(out / "run" / "metrics.jsonl", out / "loss.png", f"{config.model.name} on shapes")

    print("[3/4] export and sample")
    export_checkpoint(latest_checkpoint(out / "run"), out / "pipeline", overwrite=True)
    pipe = load_pipeline(out / "pipeline").to(device)
    generated, labels = sample_classes(pipe, sampler, ShapesDataset.num_classes, args.samples_per_class,
                                       args.guidance_scale, args.seed)
    save_grid(generated, labels, out / "grid.png")
    sample_seconds = time.perf_counter() - started - judge_seconds - train_seconds

    print("[4/4] score the samples with the judge")
    real = real_shapes(args.resolution, args.samples_per_class, REAL_IMAGES_SEED)
    scores = judge_scores(judge, generated, labels, real)
    # The distance between two real sets of this size: the floor a perfect generator would reach.
    floor = judge_scores(judge, real_shapes(args.resolution, args.samples_per_class, REAL_IMAGES_SEED + 2), labels,
                         real)
    metrics = {
        "framework": args.framework, "model": config.model.name, "objective": config.objective.kind,
        "resolution": args.resolution, "steps": args.steps, "batch_size": args.batch_size, "device": str(device),
        "mixed_precision": precision, "first_loss": records[0]["loss"], "last_loss": records[-1]["loss"],
        "judge_held_out_accuracy": judge_accuracy, "sampler": sampler, "guidance_scale": args.guidance_scale,
        "samples_per_class": args.samples_per_class,
        "generated_class_accuracy": scores["class_accuracy"],
        "generated_per_class_accuracy": {ShapesDataset.class_names[c]: value
                                         for c, value in scores["per_class_accuracy"].items()},
        "judge_feature_frechet_distance": scores["feature_frechet_distance"],
        "judge_feature_frechet_distance_real_vs_real": floor["feature_frechet_distance"],
        "seconds": {"judge": judge_seconds, "denoiser_training": train_seconds, "sampling": sample_seconds,
                    "total": time.perf_counter() - started},
        "resumed": resumed,
    }
    with atomic_path(out / "metrics.json") as temporary:  # written last: it marks the demo finished
        temporary.write_text(json.dumps(metrics, indent=2))
    print_summary(metrics, out)
    return metrics


def print_summary(metrics, out):
    rows = [
        ("denoiser", f"{metrics['model']} ({metrics['objective']}), {metrics['steps']} steps"),
        ("training loss", f"{metrics['first_loss']:.4f} -> {metrics['last_loss']:.4f}"),
        ("judge accuracy on real images", f"{metrics['judge_held_out_accuracy']:.3f}"),
        ("generated class accuracy", f"{metrics['generated_class_accuracy']:.3f}"),
        ("judge-feature Frechet distance", f"{metrics['judge_feature_frechet_distance']:.3f} "
                                           f"(real vs real: {metrics['judge_feature_frechet_distance_real_vs_real']:.3f})"),
        ("time", f"{metrics['seconds']['total']:.0f} s (judge {metrics['seconds']['judge']:.0f}, training "
                 f"{metrics['seconds']['denoiser_training']:.0f}, sampling {metrics['seconds']['sampling']:.0f})"
                 + (" in this run, which resumed an interrupted demo" if metrics["resumed"]["judge"]
                    or metrics["resumed"]["denoiser_from_step"] else "")),
        ("written", f"{out}/: grid.png, loss.png, metrics.json, pipeline/, classifier/, run/"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
