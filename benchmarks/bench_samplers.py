"""Quality per step: every sampler of a demo-trained model against model evaluations and time.

    python benchmarks/bench_samplers.py --demo demo-dit --demo demo-sit --out sampler-study

DEMO is the output directory of `vlgen demo` (--framework dit or sit): its pipeline/, its judge
(classifier/) and its settings (demo.json). For each sampler and step count the pipeline draws
samples_per_class images of every class from the same seeded noise, with the demo's guidance
scale, and the demo's judge scores them as the demo does: class accuracy and the Frechet distance
of judge features against held-out real images (real vs real: the floor). A model evaluation is
one guided denoiser call (one batched forward of the conditional and null halves).

Writes OUT/samplers.json, OUT/samplers.md (the table) and OUT/samplers.png (distance against
model evaluations), and prints the table.
"""
import argparse
import json
import time
from pathlib import Path

import matplotlib
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from vlgen.pipelines import load_pipeline  # noqa: E402
from vlgen.commands.demo import real_shapes  # noqa: E402
from vlgen.commands.judging import REAL_IMAGES_SEED, judge_scores, load_judge  # noqa: E402
from vlgen.data.shapes import ShapesDataset  # noqa: E402

# (label, sampler name, its options, num_inference_steps or None for the sampler's own). The DDPM
# pipelines' scheduler config spaces steps "leading" (ADM's DDIM spacing, the default);
# "linspace" (ADM's DDPM respacing) starts at t = T - 1.
LINSPACE = {"timestep_spacing": "linspace"}
DIFFUSERS_DDPM_ROWS = [("DPM-Solver++ 2M", "dpm-solver++", 10), ("DPM-Solver++ 2M", "dpm-solver++", 20),
                       ("DPM-Solver++ 2M", "dpm-solver++", 25), ("UniPC", "unipc", 10), ("UniPC", "unipc", 20),
                       ("Euler", "euler", 20), ("Euler ancestral", "euler-ancestral", 20), ("Heun", "heun", 20)]
SAMPLERS = {
    "ddpm": [
        ("DDPM ancestral 250", "ddpm", {}, 250),
        ("DDPM ancestral 50", "ddpm", {}, 50),
        ("DDIM 50", "ddim", {}, 50),
        ("DDIM 25", "ddim", {}, 25),
        *((f"{label} {steps}", name, {}, steps) for label, name, steps in DIFFUSERS_DDPM_ROWS),
        *((f"{label} {steps}, linspace spacing", name, LINSPACE, steps) for label, name, steps in DIFFUSERS_DDPM_ROWS),
        ("DPM-Solver++ 2M Karras 20", "dpm-solver++-karras", {}, 20),
    ],
    "flow": [
        ("ODE dopri5 (atol 1e-6, rtol 1e-3)", "ode", {"method": "dopri5"}, None),
        ("ODE Euler 25", "ode", {"method": "euler"}, 25),
        ("ODE Heun 20", "ode", {"method": "heun"}, 20),
        ("FlowMatch Euler 10", "flow-euler", {}, 10),
        ("FlowMatch Euler 20", "flow-euler", {}, 20),
        ("FlowMatch Euler 25", "flow-euler", {}, 25),
        ("FlowMatch Heun 20", "flow-heun", {}, 20),
        ("SDE Euler 250", "sde", {}, 250),
    ],
}


def measure(pipe, name, options, steps, labels, guidance_scale, seed):
    """(images (N, C, H, W) in [-1, 1], model evaluations, seconds) of one sampler."""
    pipe.use_sampler(name, **options)
    calls = []
    hook = pipe.transformer.register_forward_hook(lambda module, args, output: calls.append(1))
    started = time.perf_counter()
    images = pipe(labels.tolist(), guidance_scale=guidance_scale, num_inference_steps=steps,
                  generator=torch.Generator().manual_seed(seed), output_type="pt").images
    seconds = time.perf_counter() - started
    hook.remove()
    return images.float() * 2 - 1, len(calls), seconds


def study(demo, samples_per_class, only=None):
    demo = Path(demo)
    settings = json.loads((demo / "demo.json").read_text())
    pipe = load_pipeline(demo / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    judge, _ = load_judge(demo / "classifier")
    per_class = samples_per_class or settings["samples_per_class"]
    labels = torch.arange(ShapesDataset.num_classes).repeat(per_class)
    real = real_shapes(settings["resolution"], per_class, REAL_IMAGES_SEED)
    other_real = real_shapes(settings["resolution"], per_class, REAL_IMAGES_SEED + 2)
    floor = judge_scores(judge, other_real, labels, real)["feature_frechet_distance"]
    kind = pipe.config.process["kind"]
    rows = []
    for label, name, options, steps in SAMPLERS[kind]:
        if only and label not in only:
            continue
        try:
            images, evaluations, seconds = measure(pipe, name, options, steps, labels, settings["guidance_scale"],
                                                   settings["seed"])
        except ValueError as error:  # a scheduler that cannot sample this model says why
            rows.append({"framework": settings["framework"], "sampler": label, "name": name, "options": options,
                         "steps": steps, "refused": str(error)})
            print(f"{settings['framework']:<4} {label:<36} refused: {error}", flush=True)
            continue
        scores = judge_scores(judge, images, labels, real)
        rows.append({"framework": settings["framework"], "sampler": label, "name": name, "options": options,
                     "steps": steps, "model_evaluations": evaluations, "seconds": round(seconds, 1),
                     "class_accuracy": scores["class_accuracy"],
                     "frechet_distance": scores["feature_frechet_distance"]})
        print(f"{settings['framework']:<4} {label:<36} {evaluations:>5} evals {seconds:>7.1f} s  accuracy "
              f"{scores['class_accuracy']:.3f}  distance {scores['feature_frechet_distance']:.3f}", flush=True)
    return {"framework": settings["framework"], "demo": str(demo), "samples": len(labels),
            "guidance_scale": settings["guidance_scale"], "real_vs_real": floor, "rows": rows}


def table(studies):
    lines = ["| model | sampler | model evaluations | seconds | class accuracy | Frechet distance |",
             "|---|---|---:|---:|---:|---:|"]
    for result in studies:
        for row in result["rows"]:
            if "refused" in row:
                lines.append(f"| {result['framework']} | {row['sampler']} | refused: {row['refused'][:90]}... | | | |")
                continue
            lines.append(f"| {result['framework']} | {row['sampler']} | {row['model_evaluations']} | "
                         f"{row['seconds']:.1f} | {row['class_accuracy']:.3f} | {row['frechet_distance']:.2f} |")
        lines.append(f"| {result['framework']} | real vs real (floor) | | | | {result['real_vs_real']:.2f} |")
    return "\n".join(lines)


def plot(studies, path):
    figure, axes = plt.subplots(1, len(studies), figsize=(6 * len(studies), 4.5), squeeze=False)
    for axis, result in zip(axes[0], studies):
        for row in (row for row in result["rows"] if "refused" not in row):
            point = (row["model_evaluations"], row["frechet_distance"])
            if "linspace" in row["sampler"]:  # the same solvers starting at t = T - 1: grey, unlabelled
                axis.scatter(*point, color="grey", marker="x")
                continue
            axis.scatter(*point)
            axis.annotate(row["sampler"], point, fontsize=7, xytext=(3, 3), textcoords="offset points")
        axis.axhline(result["real_vs_real"], color="grey", linestyle="--", label="real vs real")
        if any("linspace" in row["sampler"] for row in result["rows"]):
            axis.scatter([], [], color="grey", marker="x", label="linspace spacing (from t = T - 1)")
        axis.set_xscale("log")
        axis.set_xlabel("model evaluations (guided)")
        axis.set_ylabel("judge-feature Frechet distance")
        axis.set_title(f"{result['framework']}: {result['samples']} samples, CFG {result['guidance_scale']}")
        axis.legend(loc="center right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", action="append", required=True, help="a `vlgen demo` output directory (repeat)")
    parser.add_argument("--samples-per-class", type=int, default=None, help="default: the demo's")
    parser.add_argument("--out", default="sampler-study", help="where the json, table and plot go")
    parser.add_argument("--only", nargs="+", default=None, metavar="LABEL", help="run only these rows (labels)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{torch.get_num_threads()} torch threads")
    studies = [study(demo, args.samples_per_class, args.only) for demo in args.demo]
    (out / "samplers.json").write_text(json.dumps(studies, indent=2))
    (out / "samplers.md").write_text(table(studies) + "\n")
    plot(studies, out / "samplers.png")
    print(table(studies))


if __name__ == "__main__":
    main()
