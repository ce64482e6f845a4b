"""Training checkpoints: one directory per step, written atomically.

    OUTPUT/checkpoints/step-0001000/
        ema/                 the EMA denoiser (save_pretrained: config.json + safetensors)
        model.safetensors    the trained weights
        projector.safetensors  the REPA projector (runs with repa.encoder set)
        optimizer.pt         optimizer state (tensors only: loaded with weights_only=True)
        state.pt             step, LR-scheduler and fp16 grad-scaler state, the open metrics window,
                             the precision and process count the run had
        rng-<process>.pt     each process's torch RNG states
        config.yaml          the resolved training config
        data.json            what the data was: classes, channels, size, latent VAE

Everything is written into a hidden temporary directory that is renamed into place at the end
(vlgen.core.atomic): a crash mid-save leaves the previous checkpoints as they were, and a
checkpoint directory that exists is complete.
"""
import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from vlgen.core.atomic import atomic_path
from vlgen.core.tensor_files import load_tensor_file
from vlgen.training.config import save_config

NAME = re.compile(r"^step-(\d{7,})$")


def checkpoint_dir(output_dir, step):
    return Path(output_dir) / "checkpoints" / f"step-{step:07d}"


def list_checkpoints(output_dir):
    """Complete checkpoints of a run, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), path) for path in root.iterdir() if path.is_dir() and (m := NAME.match(path.name))]
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir):
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def _rng_state():
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_checkpoint(accelerator, channel, directory, *, model, ema, optimizer, scheduler, step, config, data_info,
                    window_state=None, projector=None):
    """Write a checkpoint atomically (vlgen.core.atomic); every process must call it: the main
    process gathers each process's RNG state (on the CPU side channel) and writes everything, while
    the others wait on that channel, whose timeout allows for a slow file system."""
    rng_states = channel.gather(_rng_state())
    if accelerator.is_main_process:
        with atomic_path(directory) as temporary:
            temporary.mkdir()
            for index, rng in enumerate(rng_states):
                torch.save(rng, temporary / f"rng-{index}.pt")
            ema.save_pretrained(temporary / "ema")
            save_model(accelerator.unwrap_model(model), str(temporary / "model.safetensors"))
            if projector is not None:
                save_model(accelerator.unwrap_model(projector), str(temporary / "projector.safetensors"))
            torch.save(optimizer.state_dict(), temporary / "optimizer.pt")
            scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
            state = {"step": step, "scheduler": scheduler.state_dict(), "scaler": scaler, "log_window": window_state,
                     "mixed_precision": accelerator.mixed_precision, "num_processes": accelerator.num_processes}
            torch.save(state, temporary / "state.pt")
            save_config(config, temporary / "config.yaml")
            (temporary / "data.json").write_text(json.dumps(data_info, indent=2))
    channel.wait_for_main()


def read_checkpoint_config(directory):
    """The resolved config dict a checkpoint was trained with."""
    import yaml

    path = Path(directory) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a training checkpoint (no config.yaml)")
    return yaml.safe_load(path.read_text())


def checkpoint_step(directory):
    """The optimisation step a checkpoint was saved at."""
    return int(load_tensor_file(Path(directory) / "state.pt")["step"])


def checkpoint_training(directory):
    """How a checkpoint's weights were trained, for its model card: the resolved config, the step,
    the precision accelerate ran and the number of processes (these two None in checkpoints that
    do not record them)."""
    state = load_tensor_file(Path(directory) / "state.pt")
    return {"config": read_checkpoint_config(directory), "steps": int(state["step"]),
            "mixed_precision": state.get("mixed_precision"), "num_processes": state.get("num_processes")}


def read_data_info(directory):
    return json.loads((Path(directory) / "data.json").read_text())


def safetensors_device(device):
    """The device name safetensors accepts: "cpu" (not the "cpu:0" of CPU DDP processes) or "cuda:N"."""
    device = torch.device(device)
    return "cpu" if device.type == "cpu" else str(device)


def load_checkpoint(accelerator, directory, *, model, ema, optimizer, scheduler, projector=None):
    """Restore a checkpoint written by save_checkpoint into the given objects; returns (its step, the
    metrics window it saved or None)."""
    directory = Path(directory)
    weights = {"model.safetensors": model} | ({"projector.safetensors": projector} if projector is not None else {})
    for name in (*weights, "optimizer.pt", "state.pt", "ema"):
        if not (directory / name).exists():
            raise FileNotFoundError(f"{directory} is not a complete training checkpoint (no {name})")
    for name, module in weights.items():
        try:
            load_model(accelerator.unwrap_model(module), str(directory / name),
                       device=safetensors_device(accelerator.device))
        except SafetensorError:
            raise ValueError(f"{directory / name} is damaged (truncated or corrupt); resume from an earlier "
                             f"checkpoint (--resume {directory.parent}/step-...) or delete {directory}") from None
    ema_weights = type(ema).from_pretrained(directory / "ema").state_dict()
    ema.load_state_dict(ema_weights)
    optimizer.load_state_dict(load_tensor_file(directory / "optimizer.pt"))
    state = load_tensor_file(directory / "state.pt")
    scheduler.load_state_dict(state["scheduler"])
    if accelerator.scaler is not None and state["scaler"] is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    rng_file = directory / f"rng-{accelerator.process_index}.pt"
    if rng_file.is_file():  # absent when resuming with more processes than saved
        rng = load_tensor_file(rng_file)
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return int(state["step"]), state.get("log_window")
