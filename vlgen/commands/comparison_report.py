"""The results of `vlgen compare`: statistics over seeds, the markdown tables and the plots."""
import numpy as np

METRICS = ("class_accuracy", "feature_frechet_distance")


def seed_statistics(values):
    """Mean, sample standard deviation, minimum and maximum of one metric over seeds, and the values."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "min": float(values.min()), "max": float(values.max()), "per_seed": values.tolist()}


def summarise(settings, scores, parameters, judge_accuracy, floor):
    """results.json's content. scores[model][seed][step] = {metric: value}. Per model and evaluated
    step, seed_statistics of both metrics, and the first step whose mean accuracy reaches the target
    (None: not within the budget)."""
    models = {}
    for model in settings["models"]:
        by_seed = scores[model]
        steps = sorted(set.intersection(*(set(s) for s in by_seed.values())))
        curve = [{"step": step, **{metric: seed_statistics([by_seed[seed][step][metric] for seed in settings["seeds"]])
                                   for metric in METRICS}} for step in steps]
        # Rounded: a mean of accuracies (multiples of 1 / images) that equals the target may differ in the last bit.
        reached = [row["step"] for row in curve
                   if round(row["class_accuracy"]["mean"], 9) >= settings["target_accuracy"]]
        models[model] = {"parameters": parameters[model], "curve": curve,
                         "step_reaching_target": reached[0] if reached else None}
    return {"settings": settings, "judge_held_out_accuracy": judge_accuracy,
            "feature_frechet_distance_real_vs_real": floor, "models": models}


def summarise_resolutions(settings, scores):
    """scores[model][seed][encoding][resolution] = {metric: value} -> per model, position encoding
    and resolution (ascending), seed_statistics of both metrics."""
    summary = {}
    for model in settings["models"]:
        by_seed = [scores[model][seed] for seed in settings["seeds"]]
        summary[model] = {
            encoding: {resolution: {metric: seed_statistics([s[encoding][resolution][metric] for s in by_seed])
                                    for metric in METRICS}
                       for resolution in sorted(by_resolution, key=int)}
            for encoding, by_resolution in by_seed[0].items()}
    return summary


def _mean_std(cell, digits):
    return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"


def results_table(results):
    """results.md: a summary line per model, every evaluated step, and the resolutions table."""
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
    overrides = f" Every run with {', '.join(settings['overrides'])}." if settings.get("overrides") else ""
    lines += ["", f"Mean ± standard deviation over {seeds} seed{'s' if seeds > 1 else ''} "
                  f"({', '.join(map(str, settings['seeds']))}).{overrides}", "",
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
    if results.get("resolutions"):
        lines += ["", *resolutions_table(results)]
    return "\n".join(lines) + "\n"


def resolutions_table(results):
    """Class accuracy / feature distance of the last checkpoints at every resolution."""
    settings = results["settings"]
    trained = str(settings["resolution"])
    resolutions = sorted({resolution for encodings in results["resolutions"].values()
                          for by_resolution in encodings.values() for resolution in by_resolution}, key=int)
    lines = [f"Last checkpoints sampled at other sizes (trained at {trained}px; each size scored by a judge "
             "trained on real images of that size): class accuracy / feature distance, mean over seeds.", "",
             "| model | positions | " + " | ".join(f"{r}px" + (" (trained)" if r == trained else "")
                                                   for r in resolutions) + " |",
             "|---|---|" + "---:|" * len(resolutions)]
    for model, encodings in results["resolutions"].items():
        for encoding, by_resolution in encodings.items():
            cells = [f"{by_resolution[r]['class_accuracy']['mean']:.3f} / "
                     f"{by_resolution[r]['feature_frechet_distance']['mean']:.2f}" for r in resolutions]
            lines.append(f"| {model} | {encoding} | " + " | ".join(cells) + " |")
    return lines


def _figure(columns):
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, columns, figsize=(5.5 * columns, 4))
    return plt, figure, axes


def _finish(plt, figure, axes, title, path):
    for axis in axes:
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _title(settings):
    return (f"{settings['objective']} objective, {len(settings['seeds'])} seeds, batch {settings['batch_size']}, "
            f"{settings['resolution']}px {settings['data']}")


def results_plot(results, path):
    """Class accuracy and feature distance against steps: the mean over seeds, shaded from the
    lowest to the highest seed."""
    plt, figure, axes = _figure(2)
    for model, entry in results["models"].items():
        steps = [row["step"] for row in entry["curve"]]
        for axis, metric in zip(axes, METRICS):
            cells = [row[metric] for row in entry["curve"]]
            line, = axis.plot(steps, [c["mean"] for c in cells], marker="o",
                              label=f"{model} ({entry['parameters'] / 1e6:.2f}M)")
            axis.fill_between(steps, [c["min"] for c in cells], [c["max"] for c in cells], alpha=0.2,
                              color=line.get_color())
    settings = results["settings"]
    axes[0].axhline(settings["target_accuracy"], color="grey", linestyle=":", label="target")
    axes[0].set(xlabel="training step", ylabel="class accuracy (judge)", ylim=(0, 1))
    axes[1].set(xlabel="training step", ylabel="judge-feature Frechet distance", yscale="log")
    if results["feature_frechet_distance_real_vs_real"] is not None:
        axes[1].axhline(results["feature_frechet_distance_real_vs_real"], color="grey", linestyle=":",
                        label="real vs real")
    _finish(plt, figure, axes, _title(settings), path)


def resolutions_plot(results, path):
    """Both metrics against the sampled resolution, a line per model and position encoding (mean
    over seeds, shaded from the lowest to the highest seed)."""
    plt, figure, axes = _figure(2)
    for model, encodings in results["resolutions"].items():
        for encoding, by_resolution in encodings.items():
            sizes = sorted(by_resolution, key=int)
            for axis, metric in zip(axes, METRICS):
                cells = [by_resolution[r][metric] for r in sizes]
                line, = axis.plot([int(r) for r in sizes], [c["mean"] for c in cells], marker="o",
                                  label=f"{model}, {encoding}")
                axis.fill_between([int(r) for r in sizes], [c["min"] for c in cells], [c["max"] for c in cells],
                                  alpha=0.15, color=line.get_color())
    settings = results["settings"]
    for axis in axes:
        axis.axvline(settings["resolution"], color="grey", linestyle=":", label="trained")
    axes[0].set(xlabel="image side (pixels)", ylabel="class accuracy (judge of that size)", ylim=(0, 1))
    axes[1].set(xlabel="image side (pixels)", ylabel="judge-feature Frechet distance", yscale="log")
    _finish(plt, figure, axes, "other resolutions: " + _title(settings), path)
