"""Pipeline speed and overhead: DiTLLaMAPipeline (DDPM ancestral) and SiTLLaMAPipeline (Euler ODE)
for DiT-LLaMA-S/2 and SiT-LLaMA-S/2 on 4x32x32 latents, 50 steps, batch 16, CFG scale 4.

Prints images/s of the pipeline and of the same sampler called directly on the same noise, and
the pipeline's overhead (target < 5%). Latents are not decoded (output_type="latent"): the VAE
would cost the same in both and hide the overhead.

    python benchmarks/bench_pipeline.py [--batch-size 16] [--steps 50] [--repeats 2] [--device cpu]
"""

import torch

from vlgen.pipelines import create_pipeline
from vlgen.sampling import classifier_free_guidance, sample_ddpm, sample_ode
from measure import latent_batch, random_weight_model, sampling_arguments, seconds
from vlgen.commands.allocator import keep_freed_memory
from vlgen.diffusion import create_diffusion
from vlgen.transport import Transport

OBJECTIVES = {
    "DiT-LLaMA-S/2": {"kind": "ddpm", "noise_schedule": "linear", "diffusion_steps": 1000, "prediction": None},
    "SiT-LLaMA-S/2": {"kind": "flow", "path": "Linear", "prediction": None, "sample_eps": None},
}

SAMPLERS = {"ddpm": {"sampler": "ddpm"}, "flow": {"sampler": "ode", "method": "euler"}}  # what direct_sampler calls


def direct_sampler(model, objective, steps, scale):
    """The sampler call the pipeline wraps, on the bare model."""
    guided = classifier_free_guidance(model, scale, model.null_class_id, model.config.in_channels)
    if objective["kind"] == "ddpm":
        diffusion = create_diffusion(str(steps))
        return lambda noise, labels: sample_ddpm(guided, diffusion, noise, generator=torch.Generator().manual_seed(0),
                                                 progress=False, y=labels)
    return lambda noise, labels: sample_ode(guided, Transport(), noise, method="euler", num_steps=steps,
                                            progress=False, y=labels)


def main():
    args = sampling_arguments(__doc__.splitlines()[0], batch_size=16, guidance_scale=4.0, repeats=2)
    keep_freed_memory()

    print(f"batch {args.batch_size}, {args.steps} steps, CFG {args.guidance_scale}, {args.device}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'model':<15} {'pipeline img/s':>15} {'direct img/s':>13} {'overhead':>9}")
    for name, objective in OBJECTIVES.items():
        model = random_weight_model(name, args.device)
        noise, labels = latent_batch(model, args.batch_size, args.device)
        pipe = create_pipeline(model, objective, [str(i) for i in range(model.config.num_classes)],
                               **SAMPLERS[objective["kind"]])
        pipe.set_progress_bar_config(disable=True)
        direct = direct_sampler(model, objective, args.steps, args.guidance_scale)

        def through_pipeline():
            pipe(labels.tolist(), guidance_scale=args.guidance_scale, num_inference_steps=args.steps, latents=noise,
                 generator=torch.Generator().manual_seed(0), output_type="latent")

        with torch.inference_mode():
            direct(noise[:2], labels[:2])  # warm-up
            # Interleaved repeats, best of each: robust to other load on a shared machine.
            runs = [(seconds(through_pipeline, args.device), seconds(lambda: direct(noise, labels), args.device))
                    for _ in range(args.repeats)]
        pipeline_s, direct_s = (min(times) for times in zip(*runs))
        print(f"{name:<15} {args.batch_size / pipeline_s:>15.3f} {args.batch_size / direct_s:>13.3f} "
              f"{100 * (pipeline_s / direct_s - 1):>8.1f}%")


if __name__ == "__main__":
    main()
