"""Training speed on a shared machine: quiet, and with one busy competing process per usable core.

Two steps are timed, each in its own subprocess: the demo's denoiser training (the real training
loop on the shapes data, with its data-loader workers) and a DiT-LLaMA-S/2 step on random latents
(fp32, batch 8, as run_all.py). Each runs first on the quiet machine, then while this benchmark
keeps every usable core busy with a spinning process. The ratio loaded / quiet is the slowdown:
2 is the fair share of the CPU that is left; the target is <= 3.

--policy vlgen (default) runs the processes as the vlgen command does (vlgen.core.threads: threads
from the usable CPUs, OpenMP's idle threads sleeping); --policy torch-default leaves torch's
defaults (every core, OpenMP's spinning wait), the behaviour before the policy.

--whole-demo runs `vlgen demo` from start to end instead (judge, training, sampling, scoring; about
25 minutes quiet on 2 AVX2 cores in float32), quiet and then loaded, or only under the conditions
named; extra demo options go in --demo-args. The demo applies vlgen's thread policy itself.

    python benchmarks/bench_contention.py [--policy vlgen|torch-default] [--steps 40] [--data-workers N]
    python benchmarks/bench_contention.py --whole-demo [--conditions quiet,loaded] [--demo-args "--steps 1000"]
"""
import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def busy_processes(count):
    """Start `count` processes that spin on one core each."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def demo_step_times(steps, warmup, data_workers=None):
    """Seconds of each of `steps` demo training steps (data loading included) after `warmup`;
    data_workers: the demo's own number of data-loader processes unless given."""
    from accelerate import Accelerator

    from vlgen.commands.cli import build_parser
    from vlgen.commands.demo import denoiser_config
    from vlgen.training.loop import Run

    with tempfile.TemporaryDirectory() as out:
        args = build_parser().parse_args(["demo", "--steps", str(steps + warmup)])
        config = denoiser_config(args, Path(out), "no")
        if data_workers is not None:
            config.data.num_workers = data_workers
        run = Run(config, Accelerator(cpu=True))
        times, start = [], time.perf_counter()
        for batch in run.loader():
            run.train_step(batch)
            now = time.perf_counter()
            times.append(now - start)
            start = now
    return times[warmup:]


def dit_step_times(steps, warmup, data_workers=None):
    from measure import time_calls, training_step

    return time_calls(training_step("DiT-LLaMA-S/2", "cpu", "fp32", 8), "cpu", steps, warmup)


STEPS = {"demo": demo_step_times, "DiT-LLaMA-S/2": dit_step_times}


def child(args):
    if args.policy == "vlgen":  # before torch loads, as the vlgen command does
        from vlgen.core.threads import apply_thread_policy

        apply_thread_policy("auto")
    import torch

    from vlgen.commands.allocator import keep_freed_memory

    keep_freed_memory()
    steps = args.steps if args.kind == "demo" else max(4, args.steps // 8)
    times = STEPS[args.kind](steps, warmup=2, data_workers=args.data_workers)
    print(json.dumps({"median_s": statistics.median(times), "threads": torch.get_num_threads()}))


@contextlib.contextmanager
def competition(loaded):
    """The environment for a measured process, with every usable core kept busy while `loaded`.
    OpenMP settings are left to the policy under test."""
    from vlgen.core.threads import usable_cpus

    environment = {key: value for key, value in os.environ.items()
                   if key not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    busy = busy_processes(usable_cpus()) if loaded else []
    try:
        yield environment
    finally:
        for process in busy:
            process.kill()
            process.wait()


def measure(kind, args, loaded):
    command = [sys.executable, __file__, "--child", kind, "--policy", args.policy, "--steps", str(args.steps)]
    if args.data_workers is not None:
        command += ["--data-workers", str(args.data_workers)]
    with competition(loaded) as environment:
        output = subprocess.run(command, check=True, capture_output=True, text=True, env=environment).stdout
    return json.loads(output.strip().splitlines()[-1])


def whole_demo(conditions, demo_args):
    """Run `vlgen demo` from start to end under each condition ("quiet" or "loaded"); print its own
    timings and scores, and the loaded / quiet ratio of the whole command when both ran."""
    print(f"{'condition':<10} {'wall s':>8} {'judge s':>8} {'train s':>8} {'sample s':>9} {'accuracy':>9}")
    walls = {}
    for condition in conditions:
        with tempfile.TemporaryDirectory() as scratch, competition(condition == "loaded") as environment:
            out = Path(scratch) / "demo-output"
            started = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "vlgen", "demo", "--out", str(out), *demo_args],
                                    env=environment, capture_output=True, text=True)
            walls[condition] = time.perf_counter() - started
            if result.returncode:  # its progress bars are kept out of the table, its errors are not
                sys.exit(f"vlgen demo failed ({condition}):\n{result.stderr[-4000:]}")
            metrics = json.loads((out / "metrics.json").read_text())
        seconds = metrics["seconds"]
        print(f"{condition:<10} {walls[condition]:>8.0f} {seconds['judge']:>8.0f} {seconds['denoiser_training']:>8.0f} "
              f"{seconds['sampling']:>9.0f} {metrics['generated_class_accuracy']:>9.3f}", flush=True)
    if len(walls) == 2:
        print(f"whole demo, loaded / quiet: {walls['loaded'] / walls['quiet']:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="vlgen", choices=["vlgen", "torch-default"])
    parser.add_argument("--steps", type=int, default=40, help="timed demo steps (the S/2 step times an eighth)")
    parser.add_argument("--data-workers", type=int, default=None,
                        help="the demo step's data-loader processes (default: the demo's own)")
    parser.add_argument("--whole-demo", action="store_true", help="time `vlgen demo` from start to end instead")
    parser.add_argument("--conditions", default="quiet,loaded", help="with --whole-demo: quiet, loaded or both")
    parser.add_argument("--demo-args", default="", help='with --whole-demo: options for the demo, e.g. "--steps 1000"')
    parser.add_argument("--child", dest="kind", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.kind is not None:
        return child(args)
    from vlgen.core.threads import usable_cpus

    if args.whole_demo:
        conditions = args.conditions.split(",")
        if not conditions or set(conditions) - {"quiet", "loaded"}:
            parser.error(f"--conditions takes quiet, loaded or quiet,loaded, not {args.conditions!r}")
        print(f"vlgen demo {args.demo_args or '(defaults)'}, {usable_cpus()} usable CPUs, load average {os.getloadavg()[0]:.2f} "
              f"at start; loaded: {usable_cpus()} spinning processes")
        return whole_demo(conditions, shlex.split(args.demo_args))

    workers = "the demo's" if args.data_workers is None else args.data_workers
    print(f"policy {args.policy}, {workers} data workers, {usable_cpus()} usable CPUs, load average {os.getloadavg()[0]:.2f} at start; "
          f"loaded: {usable_cpus()} spinning processes")
    print(f"{'step':<16} {'threads':>7} {'quiet s':>8} {'loaded s':>9} {'loaded/quiet':>13}")
    ratios = {}
    for kind in STEPS:
        quiet, loaded = measure(kind, args, False), measure(kind, args, True)
        ratios[kind] = loaded["median_s"] / quiet["median_s"]
        print(f"{kind:<16} {quiet['threads']:>7} {quiet['median_s']:>8.3f} {loaded['median_s']:>9.3f} "
              f"{ratios[kind]:>13.2f}")
    print(json.dumps(ratios))  # the last line: what run_all.py reads


if __name__ == "__main__":
    main()
