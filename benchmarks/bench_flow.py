"""ODE sampling cost: dopri5 against 50-step Heun and Euler on SiT-LLaMA-S/2 (4x32x32 latents).

Prints, per solver: model evaluations (NFE), wall time per batch and per image, and the RMS
difference of the samples from the dopri5 solution. Weights are random (std 0.02) because none can
be downloaded here; a trained field is less smooth, so dopri5 needs more evaluations on one.

    python benchmarks/bench_flow.py [--model SiT-LLaMA-S/2] [--batch-size 8] [--steps 50] [--device cpu]
"""

import torch

from vlgen.sampling import classifier_free_guidance, sample_ode
from measure import latent_batch, random_weight_model, sampling_arguments, seconds
from vlgen.commands.allocator import keep_freed_memory
from vlgen.transport import Transport


class CountingModel(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x, t, y):
        self.calls += 1
        return self.model(x, t, y)


def main():
    args = sampling_arguments(__doc__.splitlines()[0], model="SiT-LLaMA-S/2", batch_size=8, guidance_scale=1.0)
    keep_freed_memory()

    model = random_weight_model(args.model, args.device)
    noise, labels = latent_batch(model, args.batch_size, args.device)
    counted = CountingModel(model)
    denoise = classifier_free_guidance(counted, args.guidance_scale, model.null_class_id, guided_channels=4)
    transport = Transport("Linear", "velocity")

    with torch.inference_mode():
        model(noise, torch.zeros(args.batch_size, device=args.device), labels)  # warm-up
    print(f"{args.model}, batch {args.batch_size}, CFG {args.guidance_scale}, {args.device}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'solver':<30} {'NFE':>5} {'s/batch':>9} {'s/img':>7} {'RMS vs dopri5':>14}")
    solvers = [("dopri5 (atol 1e-6, rtol 1e-3)", dict(method="dopri5")),
               (f"heun, {args.steps} steps", dict(method="heun", num_steps=args.steps)),
               (f"euler, {args.steps} steps", dict(method="euler", num_steps=args.steps))]
    reference = None
    for name, options in solvers:
        counted.calls = 0
        samples = []

        def run():
            with torch.inference_mode():
                samples.append(sample_ode(denoise, transport, noise, progress=False, y=labels, **options))

        elapsed = seconds(run, args.device)
        x = samples[0]
        reference = x if reference is None else reference
        rms = (x - reference).pow(2).mean().sqrt().item()
        print(f"{name:<30} {counted.calls:>5} {elapsed:>9.2f} {elapsed / args.batch_size:>7.3f} {rms:>14.2e}")


if __name__ == "__main__":
    main()
