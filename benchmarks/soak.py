"""Kill and preemption soak: training and sampling interrupted again and again, then resumed.

A tiny `vlgen train` runs once straight through, then again in another directory where it is
killed at random moments (SIGKILL, as a crash or an out-of-memory kill, or SIGTERM, as SLURM,
Kubernetes and spot preemption send) and started again with `--resume latest` until it finishes.
The same is done for `vlgen sample` into an npz. Passes when the interrupted runs end bitwise
equal to the straight ones: the final weights (model and EMA), metrics.jsonl line for line (less
its timing column) and the npz bytes.

    python benchmarks/soak.py [--interruptions 10] [--seed 0]
"""
import argparse
import filecmp
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

TRAIN = ["--set", "model.hidden_size=32", "--set", "model.depth=2", "--set", "model.num_heads=2",
         "--set", "data.resolution=16", "--set", "data.num_samples=512", "--set", "data.num_workers=0",
         "--set", "train.global_batch_size=8", "--set", "train.max_steps=1500", "--set", "logging.log_every=10",
         "--set", "logging.checkpoint_every=25", "--set", "logging.sample_every=0", "--set", "logging.tracker=null"]
SAMPLE = ["--num-samples", "960", "--batch-size", "4", "--num-inference-steps", "16", "--sampler", "ode", "--option",
          "method=euler"]
VLGEN = [sys.executable, "-m", "vlgen"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run(command, log):
    with open(log, "a") as output:
        return subprocess.run(command, stdout=output, stderr=output, env=ENV).returncode


def run_interrupted(command, interruptions, window, rng, log, done):
    """Start `command` until it exits 0 or done() (a kill can land after the work is complete),
    interrupting the first `interruptions` starts at a random moment within `window` seconds,
    alternately with SIGKILL and SIGTERM; returns the signals sent."""
    sent = []
    while not done():
        with open(log, "a") as output:
            process = subprocess.Popen(command, stdout=output, stderr=output, env=ENV, start_new_session=True)
            if len(sent) < interruptions:
                try:
                    process.wait(timeout=rng.uniform(*window))
                except subprocess.TimeoutExpired:
                    signum = (signal.SIGKILL, signal.SIGTERM)[len(sent) % 2]  # alternately crash and preempt
                    os.killpg(process.pid, signum)
                    process.wait()
                    sent.append(signal.Signals(signum).name)
                    continue
            code = process.wait()
        if code == 0:
            return sent
        raise SystemExit(f"{' '.join(command)} failed with exit status {code}:\n{log.read_text()[-3000:]}")
    return sent


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def metrics_lines(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in lines]


def same_weights(a, b):
    for name in ("model.safetensors", "ema/diffusion_pytorch_model.safetensors"):
        left, right = load_file(str(a / name)), load_file(str(b / name))
        if left.keys() != right.keys() or any(not left[k].equal(right[k]) for k in left):
            return False
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interruptions", type=int, default=10, help="interruptions of each of the two jobs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as root:
        root, log = Path(root), Path(root) / "log.txt"
        train = [*VLGEN, "train", *TRAIN]
        code, straight_s = timed(lambda: run([*train, "--set", f"logging.output_dir={root / 'straight'}"], log))
        assert code == 0, log.read_text()[-3000:]
        window = (2.0, 0.5 * straight_s)  # from the imports to half a whole run
        sent, interrupted_s = timed(lambda: run_interrupted(
            [*train, "--set", f"logging.output_dir={root / 'killed'}", "--resume", "latest"],
            args.interruptions, window, rng, log, done=lambda: False))
        final = "checkpoints/step-0001500"
        train_ok = (same_weights(root / "straight" / final, root / "killed" / final)
                    and metrics_lines(root / "straight") == metrics_lines(root / "killed"))
        print(f"training: {len(sent)} interruptions ({sent.count('SIGKILL')} SIGKILL, {sent.count('SIGTERM')} "
              f"SIGTERM); straight {straight_s:.0f} s, interrupted and resumed {interrupted_s:.0f} s in all; "
              f"weights and metrics.jsonl {'equal' if train_ok else 'DIFFERENT'}")

        assert run([*VLGEN, "export", str(root / "straight" / final), "--out", str(root / "pipe")], log) == 0
        sample = [*VLGEN, "sample", "--pipeline", str(root / "pipe"), *SAMPLE]
        code, straight_s = timed(lambda: run([*sample, "--out", str(root / "straight.npz")], log))
        assert code == 0, log.read_text()[-3000:]
        killed = root / "killed.npz"
        sent, interrupted_s = timed(lambda: run_interrupted(
            [*sample, "--out", str(killed)], args.interruptions, (2.0, 0.6 * straight_s), rng, log,
            done=lambda: killed.is_file() and not (root / "killed.npz.parts").exists()))
        sample_ok = filecmp.cmp(root / "straight.npz", root / "killed.npz", shallow=False)
        print(f"sampling: {len(sent)} interruptions ({sent.count('SIGKILL')} SIGKILL, {sent.count('SIGTERM')} "
              f"SIGTERM); straight {straight_s:.0f} s, interrupted and resumed {interrupted_s:.0f} s in all; "
              f"npz bytes {'equal' if sample_ok else 'DIFFERENT'}")
    return 0 if train_ok and sample_ok else 1


if __name__ == "__main__":
    sys.exit(main())
