"""Sampling speed: 50-step DDPM and DDIM of DiT-LLaMA-S/2 (4x32x32 latents), with and without CFG.

Prints wall time per image and the CFG / no-CFG ratio (target <= 2.1: guidance costs one batched
forward of twice the batch, nothing else).

    python benchmarks/bench_sampling.py [--model DiT-LLaMA-S/2] [--batch-size 8] [--steps 50] [--device cpu]
"""
import torch

from measure import latent_batch, random_weight_model, sampling_arguments, seconds
from vlgen.sampling import classifier_free_guidance, sample_ddim, sample_ddpm
from vlgen.commands.allocator import keep_freed_memory
from vlgen.diffusion import create_diffusion


def time_sampler(sampler, denoise, diffusion, noise, labels):
    def run():
        with torch.inference_mode():
            sampler(denoise, diffusion, noise, generator=torch.Generator().manual_seed(0), progress=False, y=labels)

    return seconds(run, noise.device)


def main():
    args = sampling_arguments(__doc__.splitlines()[0], model="DiT-LLaMA-S/2", batch_size=8, guidance_scale=4.0,
                              repeats=2)
    keep_freed_memory()

    model = random_weight_model(args.model, args.device)
    noise, labels = latent_batch(model, args.batch_size, args.device)
    guided = classifier_free_guidance(model, args.guidance_scale, model.null_class_id, guided_channels=4)
    samplers = {"DDPM": (sample_ddpm, create_diffusion(str(args.steps))),
                "DDIM": (sample_ddim, create_diffusion(f"ddim{args.steps}"))}

    sample_ddim(model, create_diffusion("ddim2"), noise, progress=False, y=labels)  # warm-up
    print(f"{args.model}, {args.steps} steps, batch {args.batch_size}, {args.device}, {torch.get_num_threads()} threads")
    # "2x batch": no guidance at twice the batch, the work CFG cannot avoid; CFG / 2x batch near 1.00
    # means guidance adds nothing beyond the doubled batch.
    double_noise, double_labels = torch.cat([noise, noise]), torch.cat([labels, labels])
    print(f"{'sampler':<8} {'no CFG s/img':>13} {'CFG s/img':>10} {'CFG/no-CFG':>11} {'CFG/2x batch':>13}")
    for name, (sampler, diffusion) in samplers.items():
        # Interleaved repeats, best of each: robust to other load on a shared machine.
        runs = [(time_sampler(sampler, model, diffusion, noise, labels),
                 time_sampler(sampler, guided, diffusion, noise, labels),
                 time_sampler(sampler, model, diffusion, double_noise, double_labels))
                for _ in range(args.repeats)]
        plain, cfg, double = (min(times) / args.batch_size for times in zip(*runs))
        print(f"{name:<8} {plain:>13.3f} {cfg:>10.3f} {cfg / plain:>11.2f} {cfg / double:>13.2f}")


if __name__ == "__main__":
    main()
