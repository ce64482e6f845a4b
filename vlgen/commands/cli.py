"""The `vlgen` command: argparse subcommands."""
import argparse
import os
import sys
import warnings
from contextlib import contextmanager

from vlgen.commands.defaults import DEMO_FRAMEWORKS, FID_BATCH, GRID_GUIDANCE_SCALE, NPZ_GUIDANCE_SCALE, SAMPLE_DTYPES


# Errors that come from the user's input or data: reported in one line, exit status 2.
USER_ERRORS = (ValueError, OSError, FloatingPointError)  # one line each, unless --traceback
TRACEBACK_VARIABLE = "VLGEN_TRACEBACK"
# `vlgen train-classifier` without --size: learns shapes in a few minutes on 2 CPU cores.
SMALL_CLASSIFIER = dict(hidden_size=96, depth=3, num_heads=6)


@contextmanager
def _warnings_reported(command):
    """Warnings raised in the block, each printed as one `vlgen COMMAND: warning: ...` line after it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        print(f"vlgen {command}: warning: {warning.message}", file=sys.stderr)


def _cmd_models(args):
    import torch

    from vlgen.models import MODEL_CONFIGS, create_model

    print(f"{'model':<18} {'parameters':>14}")
    for name in MODEL_CONFIGS:
        with torch.device("meta"):  # shapes only: nothing is allocated
            count = sum(p.numel() for p in create_model(name).parameters())
        print(f"{name:<18} {count:>14,}")


def _cmd_convert(args):
    from vlgen.models.conversion import from_diffusers_dit, from_reference_state_dict, load_reference_checkpoint

    if args.source == "diffusers":
        from diffusers import DiTTransformer2DModel

        subfolder = None if args.subfolder == "" else args.subfolder
        dit = DiTTransformer2DModel.from_pretrained(args.checkpoint, subfolder=subfolder)
        model = from_diffusers_dit(dit)
    else:
        state_dict = load_reference_checkpoint(args.checkpoint, weights=args.weights)
        model = from_reference_state_dict(state_dict, args.source, sample_size=args.sample_size)
    model.save_pretrained(args.out)
    count = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {model.config.block_type} denoiser, {count:,} parameters")


def _cmd_fid(args):
    from vlgen.commands.fid import run_fid

    with _warnings_reported("fid"):
        run_fid(args)


def _cmd_train(args):
    from vlgen.commands.train import run_training

    return run_training(args)  # the run is freed only after main has closed the process group


def _cmd_sample(args):
    from vlgen.commands.sample import run_sampling

    written = run_sampling(args)
    if written is not None:
        print(f"wrote {written}")


def _cmd_demo(args):
    from vlgen.commands.demo import run_demo

    run_demo(args)


def _cmd_compare(args):
    from vlgen.commands.compare import run_comparison

    run_comparison(args)


def _cmd_train_classifier(args):
    from accelerate import Accelerator

    from vlgen.core.output_dir import check_output_dir, save_pretrained_with_metrics
    from vlgen.tasks.classification import accuracy, create_classifier, train_classifier
    from vlgen.data.images import ImageDataset
    from vlgen.data.shapes import ShapesDataset

    check_output_dir(args.out, args.overwrite, marker="metrics.json")
    if args.data == "shapes":
        data, held_out = ShapesDataset(args.image_size, args.num_samples, args.seed), ShapesDataset(
            args.image_size, 1000, args.seed + 1)
    else:
        data = ImageDataset(args.data, args.image_size)
        held_out = ImageDataset(args.eval_data, args.image_size) if args.eval_data else None
    widths = {} if args.size else dict(SMALL_CLASSIFIER)  # no --size: the small shapes classifier
    widths.update({k: getattr(args, k) for k in SMALL_CLASSIFIER if getattr(args, k) is not None})
    model = create_classifier(args.size or "S", data.num_classes, image_size=args.image_size,
                              patch_size=args.patch_size, layer_scale_init=args.layer_scale_init, **widths)
    accelerator = Accelerator()
    losses = train_classifier(model, data, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                              num_workers=args.num_workers, accelerator=accelerator)
    model = accelerator.unwrap_model(model)
    metrics = {"steps": args.steps, "first_loss": losses[0], "last_loss": losses[-1],
               "class_names": list(data.class_names)}
    if held_out is not None:
        metrics["held_out_accuracy"] = accuracy(model, held_out, num_workers=args.num_workers)
    if accelerator.is_main_process:
        save_pretrained_with_metrics(model, args.out, metrics, overwrite=args.overwrite)
        summary = f", held-out accuracy {metrics['held_out_accuracy']:.3f}" if held_out is not None else ""
        print(f"wrote {args.out}: loss {losses[0]:.3f} -> {losses[-1]:.3f}{summary}")


def _cmd_extract_latents(args):
    from accelerate import Accelerator

    from vlgen.core.precision import set_tf32
    from vlgen.data.latents import extract_latents
    from vlgen.tasks.encoders import load_encoder

    set_tf32(args.tf32)
    source_options = {"image_column": args.image_column, "label_column": args.label_column, "split": args.split}
    if args.streaming:
        source_options["streaming"] = True
    accelerator = Accelerator()
    encoder = None if args.encoder is None else load_encoder(args.encoder, accelerator.device)
    meta = extract_latents(accelerator, args.data, args.vae, args.out, resolution=args.resolution,
                           batch_size=args.batch_size, flip=args.flip, dtype=args.dtype, num_workers=args.num_workers,
                           vae_subfolder=args.vae_subfolder or None, skip_bad=args.skip_bad, shard_size=args.shard_size,
                           data_format=args.format, source_options=source_options, encoder=encoder)
    if meta is not None:
        skipped = f", {meta['skipped']:,} unreadable images skipped" if meta["skipped"] else ""
        print(f"wrote {args.out}: {meta['count']:,} images -> latents {tuple(meta['latent_shape'])} (scaling "
              f"{meta['scaling_factor']}, mirror images {'on' if meta['flip'] else 'off'}{skipped}"
              f"{', encoder features' if meta['encoder'] else ''})")


def _cmd_export(args):
    from vlgen.commands.export import export_checkpoint, read_scores

    card = {"name": args.name, "license": args.license, "datasets": args.datasets or None,
            "base_model": args.base_model, "scores": read_scores(args.scores) if args.scores else None}
    with _warnings_reported("export"):
        out = export_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite,
                                card={key: value for key, value in card.items() if value is not None})
    print(f"wrote {out}: EMA weights of {args.checkpoint}")


def _add_demo_arguments(parser):
    parser.add_argument("--out", default="demo-output", help="output directory (default demo-output)")
    parser.add_argument("--framework", default="sit", choices=DEMO_FRAMEWORKS,
                        help="sit: SiT-LLaMA with flow matching (default); dit: DiT-LLaMA with DDPM")
    parser.add_argument("--steps", type=int, default=5000, help="denoiser training steps (default 5000)")
    parser.add_argument("--resolution", type=int, default=16, choices=[16, 32, 64],
                        help="image side in pixels (default 16; the models keep 8x8 tokens, so larger is not slower "
                             "per step but needs more steps)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: a GPU when one is present, else the CPU")
    parser.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "bf16", "fp16"],
                        help="autocast for both trainings (default auto: bf16 where this machine runs it faster than "
                             "float32, measured at start)")
    parser.add_argument("--batch-size", type=int, default=32, help="denoiser training batch (default 32)")
    parser.add_argument("--lr", type=float, default=1e-3, help="denoiser learning rate (default 1e-3)")
    parser.add_argument("--classifier-steps", type=int, default=1000, help="judge training steps (default 1000)")
    parser.add_argument("--samples-per-class", type=int, default=50,
                        help="generated (and real) images per class that are scored (default 50)")
    parser.add_argument("--guidance-scale", type=float, default=4.0, help="classifier-free guidance (default 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def _add_compare_arguments(parser):
    parser.add_argument("--out", default="compare-output", help="output directory (default compare-output)")
    parser.add_argument("--objective", default="flow", choices=["flow", "ddpm"],
                        help="training objective of every model: flow (SiT's interpolants, default) or ddpm")
    parser.add_argument("--models", default=None,
                        help="comma-separated model names (`vlgen models`), all at the width below (default: "
                             "DiT-S/2,DiT-LLaMA-S/2 for ddpm, SiT-S/2,SiT-LLaMA-S/2 for flow)")
    parser.add_argument("--arm", action="append", default=[], metavar="LABEL=KEY=VALUE[,KEY=VALUE...]",
                        help="a run of its own config values, e.g. --arm 'SiT-LLaMA+REPA=model.name=SiT-LLaMA-S/2,"
                             "repa.encoder=runs/classifier' (repeatable; with or instead of --models)")
    parser.add_argument("--hidden-size", type=int, default=128, help="width of every model (default 128)")
    parser.add_argument("--depth", type=int, default=4, help="blocks of every model (default 4)")
    parser.add_argument("--num-heads", type=int, default=4, help="attention heads of every model (default 4)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    parser.add_argument("--steps", type=int, default=3000, help="training steps of every run (default 3000)")
    parser.add_argument("--eval-every", type=int, default=500,
                        help="steps between the checkpoints that are scored (default 500)")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch (default 32)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    parser.add_argument("--data", default="shapes",
                        help="'shapes' (built in, default) or an image folder DATA/<class>/<image>")
    parser.add_argument("--eval-data", default=None,
                        help="held-out image folder: the judge's accuracy and the real images of the distance "
                             "(default: the judge's accuracy is not measured, the distance uses --data)")
    parser.add_argument("--resolution", type=int, default=16, help="image side in pixels (default 16)")
    parser.add_argument("--resolutions", default=None,
                        help="other image sides, comma-separated (e.g. 12,24,32): the last checkpoints also sample "
                             "there, VisionLLaMA blocks with AS2DRoPE and with unscaled RoPE, each size scored by a "
                             "judge trained on real images of that size")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a training config value for every run, e.g. --set train.ema_decay=0.999 (repeatable)")
    parser.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "bf16", "fp16"],
                        help="autocast (default auto: bf16 where this machine runs it faster than float32)")
    parser.add_argument("--classifier-steps", type=int, default=1000, help="judge training steps (default 1000)")
    parser.add_argument("--samples-per-class", type=int, default=20,
                        help="generated (and real) images per class scored at each checkpoint (default 20)")
    parser.add_argument("--guidance-scale", type=float, default=4.0, help="classifier-free guidance (default 4)")
    parser.add_argument("--target-accuracy", type=float, default=0.8,
                        help="the table gives the first step whose mean class accuracy reaches it (default 0.8)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier comparison in --out")


def _add_train_arguments(parser):
    parser.add_argument("--config", default=None, help="YAML config (configs/*.yaml); default: the built-in small "
                                                       "run on the shapes dataset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=2e-4 (repeatable)")
    parser.add_argument("--resume", default=None, help="'latest' (newest checkpoint of logging.output_dir, if any) "
                                                       "or a checkpoint directory")


def _add_sample_arguments(parser):
    from vlgen.commands.protocols import CLASS_LABELS, DEFAULTS, PROTOCOLS

    parser.add_argument("--pipeline", required=True, help="pipeline directory (from `vlgen export`)")
    parser.add_argument("--out", default=None, help="ADM-format .npz to write (FID-50K input)")
    parser.add_argument("--grid", default=None, help="labelled PNG grid to write instead of an npz")
    parser.add_argument("--protocol", default=None, choices=list(PROTOCOLS),
                        help="a paper's evaluation: every setting below as its official sampling script had it "
                             "(a flag given here wins); " + "; ".join(f"{name}: {p.source}" for name, p in PROTOCOLS.items()))
    parser.add_argument("--num-samples", type=int, default=None,
                        help=f"images in the npz (default {DEFAULTS['num_samples']})")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch and process (default 64)")
    parser.add_argument("--labels", nargs="+", default=None,
                        help="grid rows: label names or ids (default: the first 10 classes)")
    parser.add_argument("--per-label", type=int, default=4, help="grid columns: images per label (default 4)")
    parser.add_argument("--class-labels", default=None, choices=CLASS_LABELS,
                        help="npz labels: balanced (sample i has class i mod K; the default) or random (drawn "
                             "uniformly per sample from --seed, as DiT's and SiT's scripts)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help=f"classifier-free guidance (default {NPZ_GUIDANCE_SCALE} for --out, {GRID_GUIDANCE_SCALE} for --grid)")
    parser.add_argument("--guided-channels", type=int, default=None,
                        help="how many leading channels guidance applies to (default all prediction channels; DiT's "
                             "and SiT's scripts guide 3)")
    parser.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="guide only at model times in [LOW, HIGH] (DDPM steps, or flow times in [0, 1]; "
                             "Kynkaanniemi et al.'s guidance interval, LightningDiT's cfg interval); default: every step")
    parser.add_argument("--num-inference-steps", type=int, default=None, help="default: the pipeline's settings")
    parser.add_argument("--sampler", default=None,
                        help="default: the pipeline's scheduler. DDPM models: ddpm, ddim, dpm-solver++, "
                             "dpm-solver++-karras, unipc, euler, euler-ancestral, heun, diffusers-ddpm, diffusers-ddim; "
                             "flow models: ode, sde, flow-euler, flow-heun")
    parser.add_argument("--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
                        help="a sampler option, e.g. --option method=heun --option eta=0.5 (value read as YAML)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="image side in pixels (default: the trained size; others use AS2DRoPE)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default=None, choices=SAMPLE_DTYPES,
                        help="transformer precision, and the VAE's for --grid (default auto: bfloat16 where this machine "
                             "runs it faster than float32, measured once; on CUDA where the GPU has it); the VAE decodes "
                             "an npz (FID input) in float32")
    parser.add_argument("--tf32", default=None, action=argparse.BooleanOptionalAction,
                        help="CUDA float32 matmuls in TF32 (default on; --no-tf32: IEEE float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out / --grid file")


def _threads_option():
    """--threads of the commands that compute (vlgen.core.threads)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--threads", default="auto",
                        help="torch threads per process (default auto: the CPUs this process may use, by affinity "
                             "and container quota, divided among the processes a launch starts on this machine)")
    return parent


def build_parser():
    parser = argparse.ArgumentParser(prog="vlgen", description="VisionLLaMA diffusion transformers.")
    parser.add_argument("--traceback", action="store_true", default=os.environ.get(TRACEBACK_VARIABLE) == "1",
                        help=f"show an error's full traceback instead of one line (or set {TRACEBACK_VARIABLE}=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    computes = [_threads_option()]

    demo = sub.add_parser("demo", parents=computes, help="train, export, sample and score a small SiT-LLaMA on the built-in shapes "
                                       "dataset: minutes on a CPU, writes demo-output/")
    _add_demo_arguments(demo)
    demo.set_defaults(func=_cmd_demo)

    compare = sub.add_parser("compare", parents=computes,
                             help="train several models on the same data, budget and seeds, score their checkpoints "
                                  "as the demo does and write one table and plot")
    _add_compare_arguments(compare)
    compare.set_defaults(func=_cmd_compare)

    models = sub.add_parser("models", help="list the named model sizes and their parameter counts")
    models.set_defaults(func=_cmd_models)

    convert = sub.add_parser("convert", help="convert an official checkpoint to a save_pretrained directory")
    convert.add_argument("checkpoint", help="reference .pt file, or (with --from diffusers) a hub id or local directory")
    convert.add_argument("--from", dest="source", required=True,
                         choices=["dit", "sit", "visionllama-dit", "visionllama-sit", "diffusers"])
    convert.add_argument("--out", required=True, help="output directory (safetensors + config.json)")
    convert.add_argument("--weights", default="ema", choices=["ema", "model"],
                         help="which weights of a training checkpoint to take (default: ema)")
    convert.add_argument("--sample-size", type=int, default=None,
                         help="latent size the model was trained at, when the checkpoint has no pos_embed")
    convert.add_argument("--subfolder", default="transformer",
                         help="diffusers subfolder of the transformer ('' for none; default: transformer)")
    convert.set_defaults(func=_cmd_convert)

    fid = sub.add_parser("fid", parents=computes, help="FID (and sFID, IS, KID, precision/recall, FD-DINOv2, CMMD) of "
                                                       "generated images, ADM protocol")
    fid.add_argument("generated", help="image folder or ADM-format .npz (uint8 NHWC arr_0)")
    fid.add_argument("reference", nargs="?", default=None,
                     help="reference statistics .npz (mu, sigma; e.g. VIRTUAL_imagenet256_labeled.npz), images .npz or "
                          "folder; not needed for --metrics isc; fd_dinov2 and cmmd need images")
    fid.add_argument("--metrics", default="fid", help="comma-separated: fid,sfid,isc,kid,prc,fd_dinov2,cmmd (default fid)")
    fid.add_argument("--json", action="store_true",
                     help="print one JSON object with torch-fidelity's keys (frechet_inception_distance, "
                          "inception_score_mean, ...) plus vlgen's (sfid, fd_dinov2, cmmd) instead of the table")
    fid.add_argument("--save", default=None, metavar="FILE", help="also write that JSON to FILE")
    fid.add_argument("--batch-size", type=int, default=None,
                     help=f"images per feature batch (default {FID_BATCH['cuda']} on a GPU, {FID_BATCH['cpu']} on the CPU)")
    fid.add_argument("--device", default="auto", help="auto (default: a GPU when one is present), cpu, cuda, cuda:1, ...")
    fid.add_argument("--num-workers", type=int, default=0, help="image-decoding processes for folders")
    fid.add_argument("--inception-weights", default=None,
                     help="local copy of torch-fidelity's weights-inception-2015-12-05-6726825d.pth (offline machines; "
                          "or set VLGEN_INCEPTION_WEIGHTS)")
    fid.add_argument("--kid-subset-size", type=int, default=1000,
                     help="images per KID subset (default 1000, torch-fidelity's; at most the smaller set's size)")
    fid.add_argument("--clip-weights", default=None,
                     help="local copy of the CLIP ViT-L/14@336px TorchScript file for cmmd (or set VLGEN_CLIP_WEIGHTS)")
    fid.add_argument("--cache-dir", default=None,
                     help="where reference statistics computed from images are cached (default ~/.cache/vlgen)")
    fid.set_defaults(func=_cmd_fid)

    train = sub.add_parser("train", parents=computes, help="train a denoiser in one process (several: accelerate launch -m vlgen train)")
    _add_train_arguments(train)
    train.set_defaults(func=_cmd_train)

    sample = sub.add_parser("sample", parents=computes, help="sample a pipeline into an ADM-format npz (sharded over processes under "
                                           "accelerate launch -m vlgen sample) or a labelled PNG grid")
    _add_sample_arguments(sample)
    sample.set_defaults(func=_cmd_sample)

    latents = sub.add_parser("extract-latents", parents=computes,
                             help="encode images once with a VAE, for training on latents (sharded over processes "
                                  "under accelerate launch -m vlgen; run again to resume)")
    latents.add_argument("data", help="a class folder DATA/<class>/<image>, a parquet or arrow file or folder, a hub "
                                      "dataset id (org/name), or WebDataset tar shards (a .tar path or brace pattern)")
    latents.add_argument("--format", default=None, choices=["folder", "hf", "webdataset"],
                         help="the form of DATA (default: recognised from it)")
    latents.add_argument("--out", required=True, help="directory for the latent shards and meta.json")
    latents.add_argument("--vae", default="stabilityai/sd-vae-ft-ema", help="AutoencoderKL hub id or local directory")
    latents.add_argument("--vae-subfolder", default="", help="subfolder of the VAE in that repository (e.g. vae)")
    latents.add_argument("--resolution", type=int, default=256, help="ADM centre-crop size in pixels (default 256)")
    latents.add_argument("--batch-size", type=int, default=32, help="images per encoder batch and process")
    latents.add_argument("--shard-size", type=int, default=1024,
                         help="images per shard (default 1024): the unit that an interrupted run keeps")
    latents.add_argument("--no-flip", dest="flip", action="store_false",
                         help="do not also encode mirror images (then train with data.random_flip=false)")
    latents.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                         help="storage precision of the latents (float16 halves the disk space)")
    latents.add_argument("--num-workers", type=int, default=4, help="image-decoding processes")
    latents.add_argument("--skip-bad", action="store_true", help="skip (and count) unreadable images instead of failing")
    latents.add_argument("--image-column", default="image", help="Hugging Face datasets: the image column (default image)")
    latents.add_argument("--label-column", default="label", help="Hugging Face datasets: the label column (default label)")
    latents.add_argument("--split", default="train", help="Hugging Face datasets: the split (default train)")
    latents.add_argument("--streaming", action="store_true",
                         help="Hugging Face datasets: read the rows in order as they arrive (sets larger than the disk)")
    latents.add_argument("--encoder", default=None,
                         help="also store this encoder's patch features, for training with repa.encoder set to it: a "
                              "vlgen classifier directory or a DINOv2 model (dinov2_vitb14, ...)")
    latents.add_argument("--no-tf32", dest="tf32", action="store_false",
                         help="CUDA float32 matmuls and convolutions in IEEE float32 instead of TF32")
    latents.set_defaults(func=_cmd_extract_latents)

    classifier = sub.add_parser("train-classifier", parents=computes, help="train a VisionLLaMA classifier on shapes or an image folder "
                                                         "(several processes: accelerate launch -m vlgen)")
    classifier.add_argument("--data", default="shapes", help="'shapes' (built in) or an image folder DATA/<class>/<image>")
    classifier.add_argument("--eval-data", default=None, help="held-out image folder (shapes: 1000 new images)")
    classifier.add_argument("--out", default="runs/classifier", help="directory for the classifier and metrics.json")
    classifier.add_argument("--size", default=None, help="VisionLLaMA size S, B or L of the paper (default: a small "
                                                         "model, width 96, depth 3, 6 heads)")
    classifier.add_argument("--hidden-size", type=int, default=None, help="override the width")
    classifier.add_argument("--depth", type=int, default=None, help="override the depth")
    classifier.add_argument("--num-heads", type=int, default=None, help="override the number of heads")
    classifier.add_argument("--image-size", type=int, default=32)
    classifier.add_argument("--patch-size", type=int, default=4)
    classifier.add_argument("--layer-scale-init", type=float, default=0.1)
    classifier.add_argument("--num-samples", type=int, default=20000, help="shapes images to train on")
    classifier.add_argument("--steps", type=int, default=1500)
    classifier.add_argument("--batch-size", type=int, default=32, help="images per step and process")
    classifier.add_argument("--lr", type=float, default=1e-3)
    classifier.add_argument("--seed", type=int, default=0)
    classifier.add_argument("--num-workers", type=int, default=0, help="image-decoding processes")
    classifier.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    classifier.set_defaults(func=_cmd_train_classifier)

    export = sub.add_parser("export", help="write a training checkpoint's EMA model as a pipeline directory")
    export.add_argument("checkpoint", help="a checkpoint directory: OUTPUT/checkpoints/step-XXXXXXX")
    export.add_argument("--out", required=True, help="pipeline directory to write")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    card = export.add_argument_group("model card (README.md in --out)")
    card.add_argument("--name", default=None, help="the model's title (default: its architecture)")
    card.add_argument("--license", default=None, help="a Hub license id, e.g. apache-2.0 or cc-by-nc-4.0 "
                                                      "(default: other)")
    card.add_argument("--dataset", dest="datasets", action="append", default=[], metavar="HUB_ID",
                      help="a dataset the model was trained on, as a Hub id (repeatable)")
    card.add_argument("--base-model", default=None, help="the Hub id of the model it was fine-tuned from")
    card.add_argument("--scores", default=None, metavar="JSON",
                      help="evaluation scores: a JSON object of metric -> number, e.g. what `vlgen fid` prints")
    export.set_defaults(func=_cmd_export)

    return parser


def close_process_group():
    """End a multi-process run while every process is still there: a barrier, then the process
    group's orderly shutdown."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def _run(args):
    """The command's exit status; user errors, stops and a second Ctrl-C as one line."""
    from vlgen.core.signals import Stopped

    try:
        args.func(args)
        close_process_group()
    except USER_ERRORS as error:
        if args.traceback:
            raise
        print(f"vlgen {args.command}: error: {error} (vlgen --traceback {args.command} ... shows where)",
              file=sys.stderr)
        return 2
    except Stopped as stop:  # a graceful stop on SIGTERM / SIGINT, at a point that resumes
        print(f"vlgen {args.command}: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once
        print(f"vlgen {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv=None):
    from vlgen.commands.allocator import keep_freed_memory
    from vlgen.commands.launcher import check_launcher, launched_processes

    args = build_parser().parse_args(argv)
    keep_freed_memory()
    if hasattr(args, "threads"):  # before the command imports torch: OpenMP reads its settings at load
        from vlgen.core.threads import apply_thread_policy

        try:
            apply_thread_policy(args.threads)
        except ValueError as error:
            print(f"vlgen {args.command}: error: --{error}", file=sys.stderr)
            return 2
    launch_problem = check_launcher()
    if launch_problem is not None:
        print(f"vlgen {args.command}: warning: {launch_problem}", file=sys.stderr)
    code = _run(args)
    if launched_processes() > 1:
        # Everything is written and the process group is closed: end here. Freeing the run's objects
        # afterwards (DDP's reducer releases the last reference to the shut-down gloo group) was seen to
        # block a finished worker for good while the other node's processes had already exited.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
