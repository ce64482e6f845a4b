"""The training loop: accelerate (one CPU to many GPUs), EMA, logging, atomic checkpoints, resume."""
import shutil
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from vlgen.core.differences import describe_differences
from vlgen.core.host_channel import HostChannel
from vlgen.core.optimizer import create_adamw
from vlgen.core.precision import set_tf32
from vlgen.core.signals import GracefulStop, Stopped, stop_agreed
from vlgen.core.threads import threads_line
from vlgen.data.batches import GlobalBatches, ProcessBatches, local_slice, step_generator
from vlgen.training.build import build_dataset, build_model, build_objective, check_config, data_info
from vlgen.training.checkpoint import (checkpoint_dir, latest_checkpoint, list_checkpoints, load_checkpoint,
                                       read_checkpoint_config, read_data_info, save_checkpoint)
from vlgen.training.config import Config, plain_values, save_config
from vlgen.training.distributed import (agreed_mixed_precision, agreed_resume, check_sharding_launcher, claim_output,
                                        ddp_options)
from vlgen.training.ema import create_ema, update_ema
from vlgen.training.memory import fit_problem, step_bytes
from vlgen.training.metrics_log import MetricsLog
from vlgen.training.repa import Repa

# Settings that may differ between a checkpoint and the run resuming it.
RESUME_MAY_CHANGE = {"train.max_steps", "train.mixed_precision", "train.tf32", "train.gradient_accumulation_steps",
                     "train.gradient_compression", "model.gradient_checkpointing", "model.compile", "data.num_workers",
                     "data.skip_bad", "logging"}
# With several processes, a stop request is agreed on every STOP_CHECK_EVERY steps (and at logging
# and checkpoint steps) on the CPU side channel: no step waits for the GPU, and a stop comes at
# most this many steps after the signal. A single process checks every step, at no cost.
STOP_CHECK_EVERY = 10


def _flatten(values, prefix=""):
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _check_resumable(saved, current, directory):
    """Differences between the checkpoint's config and this run's that would change the training."""
    def frozen(key):
        return key not in RESUME_MAY_CHANGE and key.split(".")[0] not in RESUME_MAY_CHANGE

    saved, current = plain_values(_flatten(saved)), plain_values(_flatten(current))
    details = describe_differences(saved, current, keys=[key for key in set(saved) | set(current) if frozen(key)])
    if details:
        raise ValueError(f"checkpoint {directory} was trained with another config ({details}); resume it with "
                         f"its own config (its config.yaml) or start a new logging.output_dir")


def _learning_rate_factor(warmup_steps):
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


class Run:
    """The objects of one training run, built from a Config on an Accelerator.

    Its attributes: config, accelerator, model (prepared for the launch), ema, objective, optimizer,
    repa (when configured) and step.

    Args:
        config: a Config (`load_config`).
        accelerator: an accelerate Accelerator.
        channel: the host channel of the processes (default: a new one).
    """

    def __init__(self, config: Config, accelerator, channel=None):
        check_config(config)
        self.config, self.accelerator = config, accelerator
        self.channel = channel or HostChannel(accelerator.num_processes)
        train = config.train
        processes, micro_batches = accelerator.num_processes, train.gradient_accumulation_steps
        if train.global_batch_size % (processes * micro_batches):
            raise ValueError(f"train.global_batch_size {train.global_batch_size} is not divisible by {processes} "
                             f"process(es) x train.gradient_accumulation_steps {micro_batches}; change one of them")
        self.micro_batch = train.global_batch_size // (processes * micro_batches)
        self.dataset = build_dataset(config.data, train.seed)
        self.data_info = data_info(self.dataset)
        torch.manual_seed(train.seed)  # the same initial weights in every process
        model = build_model(config.model, self.data_info)
        self.objective = build_objective(config.objective, model)
        self.ema = create_ema(model).to(accelerator.device)
        self.repa = Repa(config.repa, model, self.dataset, accelerator.device) if config.repa.encoder else None
        trained = [model] if self.repa is None else [model, self.repa.projector]
        optimizer = create_adamw([p for module in trained for p in module.parameters()], lr=train.lr,
                                 betas=train.betas, weight_decay=train.weight_decay)
        # Not prepared by accelerate: it would step the schedule once per process.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _learning_rate_factor(train.warmup_steps))
        *self.trained, self.optimizer = accelerator.prepare(*trained, optimizer)
        self.model = self.trained[0]
        self.projector = self.trained[1] if self.repa is not None else None
        if config.model.compile:
            # In place and after DDP wraps the model: dynamo then splits the graph at DDP's gradient
            # buckets, so that their all-reduce overlaps backward. Parameter names, state dicts and the
            # EMA copy stay those of the plain model.
            self.model.compile()
        self.step = 0

    def save(self, window_state=None):
        """Checkpoint this step (every process calls it); window_state: the open metrics window."""
        cfg = self.config
        save_checkpoint(self.accelerator, self.channel, checkpoint_dir(cfg.logging.output_dir, self.step),
                        model=self.model, ema=self.ema, optimizer=self.optimizer, scheduler=self.scheduler,
                        step=self.step, config=cfg, data_info=self.data_info, window_state=window_state,
                        projector=self.projector)
        keep = cfg.logging.keep_checkpoints
        if keep is not None and self.accelerator.is_main_process:
            for old in list_checkpoints(cfg.logging.output_dir)[:-keep]:  # only once the new one is complete
                shutil.rmtree(old)

    def resume(self, directory):
        """Continue from a checkpoint (every process the same one); returns the metrics window it
        saved (or None)."""
        _check_resumable(read_checkpoint_config(directory), self.config.to_dict(), directory)
        saved_data = read_data_info(directory)
        if saved_data != self.data_info:
            raise ValueError(f"checkpoint {directory} was trained on other data ({saved_data}) than data.path gives "
                             f"now ({self.data_info})")
        self.step, window_state = load_checkpoint(self.accelerator, directory, model=self.model, ema=self.ema,
                                                  optimizer=self.optimizer, scheduler=self.scheduler,
                                                  projector=self.projector)
        steps = self.channel.gather(self.step)
        if len(set(steps)) > 1:
            raise ValueError(f"the processes read {directory} as different steps ({steps}): nodes see different "
                             "files there; wait until the checkpoint is complete on every node, or resume from an "
                             "earlier one")
        return window_state

    def loader(self):
        cfg, acc = self.config, self.accelerator
        plan = GlobalBatches(len(self.dataset), cfg.train.global_batch_size, cfg.train.seed, cfg.data.random_flip)
        batches = ProcessBatches(plan, self.step, cfg.train.max_steps, acc.process_index, acc.num_processes)
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, num_workers=cfg.data.num_workers,
                                           pin_memory=acc.device.type == "cuda")

    def train_step(self, batch):
        """One optimisation step on this process's slice, in train.gradient_accumulation_steps
        micro-batches (DDP all-reduces the gradients once, after the last); returns the step's
        losses on the device: loss (the objective's, plus REPA's when on) and, with REPA,
        repa_loss. Every random draw is made for the whole global batch from (seed, step) and
        sliced, so a step is the same for any number of processes and micro-batches, up to float
        rounding."""
        cfg, acc = self.config, self.accelerator
        device, n_global = acc.device, cfg.train.global_batch_size
        generator = step_generator(cfg.train.seed, self.step, device)
        x_all = batch["x"]
        sample_shape = x_all.shape[2:] if self.dataset.posterior else x_all.shape[1:]  # posterior: (N, 2, C, H, W)
        shape = (n_global, *sample_shape)

        def share(tensor):
            return local_slice(tensor, acc.process_index, acc.num_processes)

        t = share(self.objective.sample_times(n_global, device, generator))
        noise = share(torch.randn(shape, device=device, generator=generator))
        drop = share(torch.rand(n_global, device=device, generator=generator) < cfg.model.class_dropout_prob)
        # latents: a fresh draw from the VAE posterior, as DiT encodes per step
        posterior = share(torch.randn(shape, device=device, generator=generator)) if self.dataset.posterior else None
        micro_batches = cfg.train.gradient_accumulation_steps
        totals = {name: torch.zeros((), device=device) for name in (("loss",) if self.repa is None else
                                                                     ("loss", "repa_loss"))}
        for i in range(micro_batches):
            part = slice(i * self.micro_batch, (i + 1) * self.micro_batch)
            x = x_all[part].to(device, non_blocking=True)
            y = batch["y"][part].to(device, non_blocking=True)
            if posterior is not None:
                x = x[:, 0] + x[:, 1] * posterior[part]
            with ExitStack() as no_sync:
                if i < micro_batches - 1:
                    for module in self.trained:
                        no_sync.enter_context(acc.no_sync(module))
                losses = self.objective.training_losses(self.model, x, t[part], noise[part], y=y, drop_labels=drop[part])
                loss = losses["loss"]
                if self.repa is not None:
                    stored = batch["z"][part] if "z" in batch else None
                    alignment = self.repa.loss(self.projector, self.repa.features(stored, x))
                    loss = loss + alignment
                    totals["repa_loss"] += alignment.detach().mean() / micro_batches
                loss = loss.mean() / micro_batches
                acc.backward(loss)
            totals["loss"] += loss.detach()
        if cfg.train.grad_clip is not None:
            acc.clip_grad_norm_([p for module in self.trained for p in module.parameters()], cfg.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        update_ema(self.ema, acc.unwrap_model(self.model), cfg.train.ema_decay)
        self.step += 1
        return totals

    def memory_problem(self, capacity):
        """Why a step will not fit in capacity bytes of device memory (estimated from the model and
        the micro-batch: vlgen.training.memory), or None."""
        cfg, model, dataset = self.config, self.accelerator.unwrap_model(self.model), self.dataset
        shape = (self.micro_batch, dataset.channels, dataset.size, dataset.size)
        estimate = step_bytes(lambda: type(model).from_config(model.config), sum(p.numel() for p in model.parameters()),
                              shape, self.accelerator.mixed_precision, cfg.model.gradient_checkpointing,
                              self.accelerator.device)
        return fit_problem(estimate, capacity, self.micro_batch, cfg.train.gradient_accumulation_steps,
                           cfg.model.gradient_checkpointing)


def _first_bad_step(accelerator, first_bad):
    """The earliest step with a non-finite loss on any process, or None."""
    steps = accelerator.gather(first_bad.reshape(1))
    steps = steps[steps > 0]
    return int(steps.min()) if steps.numel() else None


def train(config: Config, *, resume=None, on_sample=None):
    """Train as configured, on the processes of the current launch (accelerate).

    SIGTERM or SIGINT stops training after the current step with a checkpoint.

    Args:
        config: a Config (`load_config`).
        resume: None (start anew), "latest" or a checkpoint directory.
        on_sample: on_sample(run), called on every process every logging.sample_every steps and at
            the end (sample grids).

    Returns:
        Run: the model, EMA, objective and optimizer of the finished run.

    Raises:
        vlgen.core.signals.Stopped: a stop signal ended the run at a checkpoint that resumes.
    """
    check_config(config)
    check_sharding_launcher()
    log = config.logging
    accelerator = Accelerator(mixed_precision=agreed_mixed_precision(config.train.mixed_precision),
                              log_with=log.tracker, project_dir=log.output_dir,
                              kwargs_handlers=[ddp_options(config.train)])
    set_tf32(config.train.tf32)
    channel = HostChannel(accelerator.num_processes)
    if accelerator.is_main_process:
        print(threads_line(), file=sys.stderr)
    output = Path(log.output_dir)
    with ExitStack() as held:
        claim_output(accelerator, channel, output, resume, held)
        return _train(config, accelerator, channel, output, resume, on_sample)


def device_capacity(device):
    """Bytes of memory of a CUDA device; None elsewhere (the memory of a CPU run is not checked)."""
    return torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None


def _train(config, accelerator, channel, output, resume, on_sample):
    log = config.logging
    run = Run(config, accelerator, channel)
    capacity = device_capacity(accelerator.device)
    if capacity is not None and accelerator.is_main_process:
        problem = run.memory_problem(capacity)
        if problem is not None:
            print(f"warning: {problem}", file=sys.stderr)
    start = agreed_resume(accelerator, channel, resume, output)
    window_state = None
    if start is not None:
        window_state = run.resume(start)
        accelerator.print(f"resumed from step {run.step} ({start})")
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        save_config(config, output / "config.yaml")
    metrics = MetricsLog(output, accelerator.device, write=accelerator.is_main_process)
    metrics.continue_after(run.step, window_state)
    if log.tracker is not None:
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                   for k, v in _flatten(config.to_dict()).items()}
        accelerator.init_trackers("train", config=hparams)

    max_steps = config.train.max_steps
    first_bad = torch.zeros((), dtype=torch.long, device=accelerator.device)  # 1-based step of the first NaN loss
    window_start = time.perf_counter()
    bar = tqdm(total=max_steps, initial=run.step, desc="train", disable=not accelerator.is_main_process)
    with bar, GracefulStop("the current step, with a checkpoint") as stop:
        for batch in run.loader():
            losses = run.train_step(batch)
            # Bookkeeping stays where it is (the losses on the device, the loader's counts on the host):
            # no host sync and no collective until a log, checkpoint or stop-check step.
            metrics.add(losses, batch.get("skipped"))
            first_bad = torch.where((first_bad == 0) & ~torch.isfinite(losses["loss"]), run.step, first_bad)
            bar.update(1)
            at_end = run.step == max_steps
            logging_now = run.step % log.log_every == 0 or at_end
            saving_now = run.step % log.checkpoint_every == 0 or at_end
            stopping = False
            if not channel.distributed or run.step % STOP_CHECK_EVERY == 0 or logging_now or saving_now:
                stopping = stop_agreed(channel, stop)
                saving_now = saving_now or stopping
            if not (logging_now or saving_now):
                continue
            bad = _first_bad_step(accelerator, first_bad)
            if bad is not None:
                last = latest_checkpoint(output)
                raise FloatingPointError(f"non-finite loss at step {bad}; training stopped, the last good checkpoint "
                                         f"is {last or 'none (no checkpoint was written yet)'}")
            if logging_now:
                elapsed = time.perf_counter() - window_start
                images_per_s = metrics.window_steps * config.train.global_batch_size / elapsed
                record = metrics.close_window(accelerator, run.step, run.scheduler.get_last_lr()[0], images_per_s)
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=run.step)
                bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{images_per_s:.1f}")
                window_start = time.perf_counter()
            paused = time.perf_counter()  # saving and sampling do not count against throughput
            if saving_now:
                run.save(metrics.window_state(accelerator))
            if stopping:
                raise Stopped(f"stopped by {stop.name or 'a signal on another process'} after step {run.step}; "
                              f"checkpoint {checkpoint_dir(output, run.step)}; continue with --resume latest",
                              stop.signum or signal.SIGTERM)
            if on_sample is not None and log.sample_every and (run.step % log.sample_every == 0 or at_end):
                on_sample(run)
            window_start += time.perf_counter() - paused
    accelerator.end_training()
    return run
