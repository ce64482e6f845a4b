"""The training loop: accelerate (one CPU to many GPUs), EMA, logging, atomic checkpoints, resume."""
import os
import shutil
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from vlgen.core.differences import describe_differences
from vlgen.core.optimizer import create_adamw
from vlgen.core.ownership import owned
from vlgen.core.precision import resolve_mixed_precision
from vlgen.core.threads import threads_line
from vlgen.core.signals import GracefulStop, Stopped, stop_agreed
from vlgen.data.batches import GlobalBatches, ProcessBatches, local_slice, step_generator
from vlgen.training.build import build_dataset, build_model, build_objective, check_config, data_info
from vlgen.training.checkpoint import (checkpoint_dir, latest_checkpoint, list_checkpoints, load_checkpoint,
                                       read_checkpoint_config, read_data_info, save_checkpoint)
from vlgen.training.config import Config, plain_values, save_config
from vlgen.training.ema import create_ema, update_ema
from vlgen.training.metrics_log import METRICS_FILE, MetricsLog

# Settings that may differ between a checkpoint and the run resuming it.
RESUME_MAY_CHANGE = {"train.max_steps", "train.mixed_precision", "model.gradient_checkpointing", "model.compile",
                     "data.num_workers", "data.skip_bad", "logging"}


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


def resolve_resume(resume, output_dir):
    """None, 'latest' (the newest checkpoint of output_dir, or None when there is none yet) or a path."""
    if resume is None:
        return None
    if resume == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"resume checkpoint {path} does not exist")
    return path


def _learning_rate_factor(warmup_steps):
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


def _holds_a_run(output):
    """What of an earlier training run an output directory holds, or None."""
    newest = latest_checkpoint(output)
    if newest is not None:
        return f"checkpoints up to {newest.name}"
    if (output / METRICS_FILE).is_file() or (output / "config.yaml").is_file():
        return "a run that stopped before its first checkpoint"
    return None


def agreed_mixed_precision(setting):
    """accelerate's mixed_precision for a setting ("auto" probes the machine: vlgen.core.precision),
    decided before the Accelerator exists (it takes the setting when it is made)."""
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    device_type = "cuda" if torch.cuda.is_available() and not use_cpu else "cpu"
    choice, why = resolve_mixed_precision(setting, device_type)
    if setting == "auto" and int(os.environ.get("RANK", "0")) == 0:
        print(why, file=sys.stderr)
    return choice


def _claim_output(accelerator, output, resume, held):
    """Refuse an output that holds another run (unless resuming) or that another process is using;
    the main process holds its lock (vlgen.core.ownership) until `held` closes. Every process
    raises the same error, so none waits for the others."""
    earlier = _holds_a_run(output) if resume is None else None
    problem = None
    if earlier is not None:
        problem = (f"{output} already holds a training run ({earlier}); continue it with --resume latest, or train "
                   "into a new directory (--set logging.output_dir=DIR)")
    elif accelerator.is_main_process:
        try:
            stale = held.enter_context(owned(output))
        except ValueError as error:
            problem = str(error)
        else:
            if stale is not None:
                print(f"took over {output} from {stale}, which is no longer running", file=sys.stderr)
    if accelerator.num_processes > 1:
        problem = next((p for p in gather_object([problem]) if p), None)
    if problem is not None:
        raise ValueError(problem)


class Run:
    """The objects of one training run, built from a Config on an Accelerator."""

    def __init__(self, config: Config, accelerator):
        check_config(config)
        self.config, self.accelerator = config, accelerator
        self.dataset = build_dataset(config.data, config.train.seed)
        self.data_info = data_info(self.dataset)
        torch.manual_seed(config.train.seed)  # the same initial weights in every process
        model = build_model(config.model, self.data_info)
        self.objective = build_objective(config.objective, model)
        self.ema = create_ema(model).to(accelerator.device)
        if config.model.compile:
            model.compile()  # in place: parameter names, state dicts and the EMA copy stay those of the plain model
        train = config.train
        optimizer = create_adamw(model.parameters(), lr=train.lr, betas=train.betas, weight_decay=train.weight_decay)
        # Not prepared by accelerate: it would step the schedule once per process.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _learning_rate_factor(train.warmup_steps))
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.step = 0

    def save(self, window_state=None):
        """Checkpoint this step (every process calls it); window_state: the open metrics window."""
        cfg = self.config
        save_checkpoint(self.accelerator, checkpoint_dir(cfg.logging.output_dir, self.step), model=self.model,
                        ema=self.ema, optimizer=self.optimizer, scheduler=self.scheduler, step=self.step, config=cfg,
                        data_info=self.data_info, window_state=window_state)
        keep = cfg.logging.keep_checkpoints
        if keep is not None and self.accelerator.is_main_process:
            for old in list_checkpoints(cfg.logging.output_dir)[:-keep]:  # only once the new one is complete
                shutil.rmtree(old)

    def resume(self, directory):
        """Continue from a checkpoint; returns the metrics window it saved (or None)."""
        _check_resumable(read_checkpoint_config(directory), self.config.to_dict(), directory)
        saved_data = read_data_info(directory)
        if saved_data != self.data_info:
            raise ValueError(f"checkpoint {directory} was trained on other data ({saved_data}) than data.path gives "
                             f"now ({self.data_info})")
        self.step, window_state = load_checkpoint(self.accelerator, directory, model=self.model, ema=self.ema,
                                                  optimizer=self.optimizer, scheduler=self.scheduler)
        return window_state

    def loader(self):
        cfg, acc = self.config, self.accelerator
        plan = GlobalBatches(len(self.dataset), cfg.train.global_batch_size, cfg.train.seed, cfg.data.random_flip)
        batches = ProcessBatches(plan, self.step, cfg.train.max_steps, acc.process_index, acc.num_processes)
        return torch.utils.data.DataLoader(self.dataset, batch_sampler=batches, num_workers=cfg.data.num_workers,
                                           pin_memory=acc.device.type == "cuda")

    def train_step(self, batch):
        """One optimisation step on this process's slice; returns the (device) loss."""
        cfg, acc = self.config, self.accelerator
        device, n_global = acc.device, cfg.train.global_batch_size
        x = batch["x"].to(device, non_blocking=True)
        y = batch["y"].to(device, non_blocking=True)
        generator = step_generator(cfg.train.seed, self.step, device)
        sample_shape = x.shape[2:] if self.dataset.posterior else x.shape[1:]  # posterior: (N, 2, C, H, W)
        shape = (n_global, *sample_shape)

        def share(tensor):
            return local_slice(tensor, acc.process_index, acc.num_processes)

        t = share(self.objective.sample_times(n_global, device, generator))
        noise = share(torch.randn(shape, device=device, generator=generator))
        drop = share(torch.rand(n_global, device=device, generator=generator) < cfg.model.class_dropout_prob)
        if self.dataset.posterior:  # latents: a fresh draw from the VAE posterior, as DiT encodes per step
            x = x[:, 0] + x[:, 1] * share(torch.randn(shape, device=device, generator=generator))
        loss = self.objective.training_losses(self.model, x, t, noise, y=y, drop_labels=drop)["loss"].mean()
        acc.backward(loss)
        if cfg.train.grad_clip is not None:
            acc.clip_grad_norm_(self.model.parameters(), cfg.train.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        update_ema(self.ema, acc.unwrap_model(self.model), cfg.train.ema_decay)
        self.step += 1
        return loss.detach()


def _first_bad_step(accelerator, first_bad):
    """The earliest step with a non-finite loss on any process, or None."""
    steps = accelerator.gather(first_bad.reshape(1))
    steps = steps[steps > 0]
    return int(steps.min()) if steps.numel() else None


def train(config: Config, *, resume=None, on_sample=None):
    """Train as configured. resume: None, 'latest' or a checkpoint directory. on_sample(run) is
    called on every process every logging.sample_every steps and at the end (sample grids).
    SIGTERM or SIGINT stops training after the current step with a checkpoint (raises Stopped).
    Returns the Run."""
    log = config.logging
    accelerator = Accelerator(mixed_precision=agreed_mixed_precision(config.train.mixed_precision),
                              log_with=log.tracker, project_dir=log.output_dir)
    if accelerator.is_main_process:
        print(threads_line(), file=sys.stderr)
    output = Path(log.output_dir)
    with ExitStack() as held:
        _claim_output(accelerator, output, resume, held)
        return _train(config, accelerator, output, resume, on_sample)


def _train(config, accelerator, output, resume, on_sample):
    log = config.logging
    run = Run(config, accelerator)
    start = resolve_resume(resume, output)
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
            loss = run.train_step(batch)
            # Bookkeeping stays on the device: no host sync until a log or checkpoint step.
            metrics.add(loss, int(batch["skipped"].sum()) if "skipped" in batch else 0)
            first_bad = torch.where((first_bad == 0) & ~torch.isfinite(loss), run.step, first_bad)
            bar.update(1)
            at_end = run.step == max_steps
            stopping = stop_agreed(accelerator, stop)
            logging_now = run.step % log.log_every == 0 or at_end
            saving_now = run.step % log.checkpoint_every == 0 or at_end or stopping
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
