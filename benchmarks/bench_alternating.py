"""Two ways of doing the same work, timed alternating in one process.

run_all.py times every row in its own process, minutes apart; on a shared host two such
processes can differ by 10-15% for reasons of their own, which swamps the ratios the targets ask
about. Here both sides of a ratio take turns in one process, so both see the same machine:

- compile: an eager and a compiled copy of the DiT-LLaMA-S/2 training step (measure.training_step:
  DDPM hybrid loss, backward, AdamW, EMA). The compile time depends on inductor's on-disk cache:
  a first compile of these shapes, or a warm cache from an earlier run.
- reference-training: vlgen's training step and the reference loop's (reference_loop.py).
- reference-sampling: vlgen's DDPM sampler and the reference p_sample_loop, with guidance.

    python benchmarks/bench_alternating.py --pair compile|reference-training|reference-sampling
        [--repeats 8] [--precision fp32|bf16] [--batch-size 8] [--sample-steps 10] [--device cpu]
"""
import argparse
import functools
import statistics
import time

from vlgen.core.threads import apply_thread_policy

apply_thread_policy("auto")  # before torch starts its threads, as the vlgen command does

import torch  # noqa: E402

from measure import seconds, training_step  # noqa: E402
from run_all import pays_after, sampling_run  # noqa: E402


def sides(args):
    """(baseline, other): the two (name, call) pairs of the chosen comparison."""
    step = functools.partial(training_step, "DiT-LLaMA-S/2", args.device, args.precision, args.batch_size)
    if args.pair == "compile":
        return ("eager", step()), ("compiled", step(compiled=True))
    if args.pair == "reference-training":
        return ("reference", step(loop="reference")), ("vlgen", step())
    return tuple((loop, sampling_run(args.device, 1, args.precision, args.batch_size, args.sample_steps, "ddpm", loop))
                 for loop in ("reference", "vlgen"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", required=True, choices=["compile", "reference-training", "reference-sampling"])
    parser.add_argument("--repeats", type=int, default=8, help="timed calls of each side (default 8)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sample-steps", type=int, default=10, help="DDPM steps of reference-sampling (default 10)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    (base_name, base), (other_name, other) = sides(args)
    started = time.perf_counter()
    for _ in range(2):  # the first calls compile (forward, backward) and warm the optimizer
        other()
    first_s = time.perf_counter() - started
    for _ in range(2):
        base()
    times = {base_name: [], other_name: []}
    for round_ in range(args.repeats):  # alternate which goes first: neither always follows the other
        for name, call in ((base_name, base), (other_name, other))[::1 if round_ % 2 == 0 else -1]:
            times[name].append(seconds(call, args.device))
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.pair}: DiT-LLaMA-S/2 {args.precision}, batch {args.batch_size}, {args.device}, "
          f"{torch.get_num_threads()} threads, {args.repeats} calls each")
    for name, values in times.items():
        print(f"{name:<10} median {median[name]:.3f} s  (min {min(values):.3f}, max {max(values):.3f})")
    summary = f"{other_name} / {base_name}: {median[other_name] / median[base_name]:.3f}"
    if args.pair == "compile":
        compile_s = first_s - 2 * median[other_name]
        summary += (f"; compiling took {compile_s:.0f} s; "
                    f"{pays_after(compile_s, median[other_name], median[base_name])}")
    print(summary)


if __name__ == "__main__":
    main()
