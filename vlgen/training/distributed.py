"""What the processes of a training launch settle before the first step: the precision, how DDP
wraps the model, who owns the output directory and which checkpoint every process resumes from.
The main process decides what depends on the file system (other nodes may see a shared directory
late) and tells the others over the CPU side channel (vlgen.core.host_channel)."""
import os
import sys
from pathlib import Path

import torch
from accelerate.utils import DistributedDataParallelKwargs
from accelerate.utils.dataclasses import DDPCommunicationHookType

from vlgen.core.ownership import owned
from vlgen.core.precision import resolve_mixed_precision
from vlgen.training.checkpoint import latest_checkpoint
from vlgen.training.metrics_log import METRICS_FILE

COMPRESSION_HOOKS = {None: DDPCommunicationHookType.NO, "bf16": DDPCommunicationHookType.BF16,
                     "fp16": DDPCommunicationHookType.FP16}


def agreed_mixed_precision(setting):
    """accelerate's mixed_precision for a setting ("auto" probes the machine, "launcher" takes the
    launcher's: vlgen.core.precision), decided before the Accelerator exists (it takes the setting
    when it is made); the main process says which setting won."""
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    device_type = "cuda" if torch.cuda.is_available() and not use_cpu else "cpu"
    choice, why = resolve_mixed_precision(setting, device_type)
    if int(os.environ.get("RANK", "0")) == 0:
        print(why, file=sys.stderr)
    return choice


def ddp_options(train):
    """How DDP wraps the denoiser: gradients are views of the all-reduce buckets (no second copy),
    the graph is static (a transformer uses every parameter in every step, so DDP plans its buckets
    once; DDP's static graph does not take the no_sync of accumulated micro-batches, so only without
    them), and gradients travel at half width when train.gradient_compression says so."""
    return DistributedDataParallelKwargs(gradient_as_bucket_view=True,
                                         static_graph=train.gradient_accumulation_steps == 1,
                                         comm_hook=COMPRESSION_HOOKS[train.gradient_compression])


SHARDING_LAUNCHERS = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}


def check_sharding_launcher():
    """vlgen trains with DDP; FSDP and DeepSpeed (chosen in `accelerate config` or by `accelerate
    launch --use_fsdp / --use_deepspeed`) shard what the EMA update and the checkpoints read whole.
    Checked before the Accelerator is made, which would build their plugins."""
    chosen = [name for variable, name in SHARDING_LAUNCHERS.items()
              if os.environ.get(variable, "false").lower() in ("1", "true", "yes")]
    if chosen:
        raise ValueError(f"the launcher selects {chosen[0]}, which vlgen train does not run: the EMA update and the "
                         f"checkpoints read the whole model on every process, which {chosen[0]} shards. Launch "
                         "with a plain multi-GPU config (accelerate config: no FSDP, no DeepSpeed); "
                         "model.gradient_checkpointing and train.gradient_accumulation_steps save memory instead")


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


def _holds_a_run(output):
    """What of an earlier training run an output directory holds, or None."""
    newest = latest_checkpoint(output)
    if newest is not None:
        return f"checkpoints up to {newest.name}"
    if (output / METRICS_FILE).is_file() or (output / "config.yaml").is_file():
        return "a run that stopped before its first checkpoint"
    return None


def claim_output(accelerator, channel, output, resume, held):
    """Refuse an output that holds another run (unless resuming) or that another process is using;
    the main process checks and holds the lock (vlgen.core.ownership) until `held` closes. Every
    process raises the same error, so none waits for the others."""
    problem = None
    if accelerator.is_main_process:
        earlier = _holds_a_run(output) if resume is None else None
        if earlier is not None:
            problem = (f"{output} already holds a training run ({earlier}); continue it with --resume latest, or "
                       "train into a new directory (--set logging.output_dir=DIR)")
        else:
            try:
                stale = held.enter_context(owned(output))
            except ValueError as error:
                problem = str(error)
            else:
                if stale is not None:
                    print(f"took over {output} from {stale}, which is no longer running", file=sys.stderr)
    problem = channel.broadcast(problem)
    if problem is not None:
        raise ValueError(problem)


def agreed_resume(accelerator, channel, resume, output):
    """The checkpoint every process resumes from (None: a fresh start), chosen by the main process."""
    choice, problem = None, None
    if accelerator.is_main_process:
        try:
            choice = resolve_resume(resume, output)
        except FileNotFoundError as error:
            problem = str(error)
    choice, problem = channel.broadcast((None if choice is None else str(choice), problem))
    if problem is not None:
        raise FileNotFoundError(problem)
    return None if choice is None else Path(choice)
