"""Compiled against eager training steps, alternating in one process.

run_all.py times the compiled step in its own process, minutes after the eager one; on a shared
host the two can differ by 10-15% for reasons of their own. Here an eager and a compiled copy of
the same DiT-LLaMA-S/2 step (measure.training_step: DDPM hybrid loss, backward, AdamW, EMA) take
turns, so both see the same machine. The compile time depends on inductor's on-disk cache: a
first compile of these shapes, or a warm cache from an earlier run.

    python benchmarks/bench_compile.py [--steps 8] [--precision fp32|bf16] [--batch-size 8] [--device cpu]
"""
import argparse
import statistics
import time

from vlgen.core.threads import apply_thread_policy

apply_thread_policy("auto")  # before torch starts its threads, as the vlgen command does

import torch  # noqa: E402

from measure import seconds, training_step  # noqa: E402
from run_all import pays_after  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps of each (default 8)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    steps = {"eager": training_step("DiT-LLaMA-S/2", args.device, args.precision, args.batch_size),
             "compiled": training_step("DiT-LLaMA-S/2", args.device, args.precision, args.batch_size, compiled=True)}
    started = time.perf_counter()
    for _ in range(2):  # the first calls compile (forward, backward) and warm the optimizer
        steps["compiled"]()
    first = time.perf_counter() - started
    for _ in range(2):
        steps["eager"]()
    times = {name: [] for name in steps}
    for round_ in range(args.steps):  # alternate which goes first: neither always follows the other
        for name in (("eager", "compiled") if round_ % 2 == 0 else ("compiled", "eager")):
            times[name].append(seconds(steps[name], args.device))
    median = {name: statistics.median(values) for name, values in times.items()}
    compile_s = first - 2 * median["compiled"]
    print(f"DiT-LLaMA-S/2 {args.precision}, batch {args.batch_size}, {args.device}, {torch.get_num_threads()} threads")
    for name, values in times.items():
        print(f"{name:<9} median {median[name]:.3f} s/step  (min {min(values):.3f}, max {max(values):.3f})")
    print(f"compiled / eager: {median['compiled'] / median['eager']:.3f}; compiling took {compile_s:.0f} s; "
          f"{pays_after(compile_s, median['compiled'], median['eager'])}")


if __name__ == "__main__":
    main()
