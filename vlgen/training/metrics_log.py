"""OUTPUT/metrics.jsonl: one JSON record per logging step, the same lines for a run that was
interrupted and resumed as for one that was not.

The loss of a record is the mean over the steps since the previous record (a window). A
checkpoint that falls inside a window saves the window's sum so far (`window_state`), and a
resumed run starts from it; records after the resumed checkpoint (written by the run that died)
are dropped. A torn last line (a crash while appending) is dropped with a warning.
"""
import json
import warnings
from pathlib import Path

import torch

METRICS_FILE = "metrics.jsonl"


def read_records(path):
    """The records of a metrics file; a torn last line is dropped with a warning naming the file,
    any other unreadable line is an error naming the file and line."""
    path = Path(path)
    lines = path.read_text().splitlines() if path.is_file() else []
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                warnings.warn(f"{path}: dropped a torn last line (written when a run died while appending)",
                              stacklevel=2)
                continue
            raise ValueError(f"{path} line {number} is not a JSON record; repair or remove that line") from None
    return records


class MetricsLog:
    """The metrics file and the open window of a run (kept on the device: no host sync between
    logging steps). A record has the window's mean of each loss a step returns (loss, and
    repa_loss when representation alignment is on)."""

    def __init__(self, output_dir, device, write):
        self.path = Path(output_dir) / METRICS_FILE
        self.write, self.device = write, device  # the main process writes
        self.loss_sums = {}
        self.window_steps = 0
        self.skipped_total = torch.zeros((), dtype=torch.long)  # on the host, where the loader counts

    def continue_after(self, step, window_state=None):
        """Keep the records up to `step` and restore the window a checkpoint saved there."""
        if self.write and self.path.is_file():
            kept = [record for record in read_records(self.path) if record["step"] <= step]
            self.path.write_text("".join(json.dumps(record) + "\n" for record in kept))
        if window_state is not None:
            # checkpoints of earlier versions kept the one loss as loss_sum
            sums = window_state.get("loss_sums", {"loss": window_state.get("loss_sum")})
            self.loss_sums = {name: value.to(self.device) for name, value in sums.items()}
            self.window_steps = int(window_state["window_steps"])
            self.skipped_total.fill_(int(window_state["skipped_total"]))

    def add(self, losses, skipped=None):
        """One step's losses (a dict of device tensors) and the loader's per-sample counts of skipped
        images (a host tensor, or None), added where they are: no transfer."""
        for name, value in losses.items():
            self.loss_sums[name] = self.loss_sums[name] + value if name in self.loss_sums else value.clone()
        self.window_steps += 1
        if skipped is not None:
            self.skipped_total += skipped.sum()

    def _mean_sums(self, accelerator):
        return {name: accelerator.reduce(value, reduction="mean") for name, value in self.loss_sums.items()}

    def window_state(self, accelerator):
        """What a checkpoint keeps of the open window (the loss sums averaged over processes)."""
        return {"loss_sums": {name: value.cpu() for name, value in self._mean_sums(accelerator).items()},
                "window_steps": self.window_steps, "skipped_total": int(self.skipped_total)}

    def close_window(self, accelerator, step, lr, images_per_s):
        """Append the record of the window ending at `step`; returns it."""
        means = {name: value.item() / self.window_steps for name, value in self._mean_sums(accelerator).items()}
        record = {"step": step, **means, "lr": lr, "images_per_s": images_per_s,
                  "skipped_images": int(self.skipped_total), "mixed_precision": accelerator.mixed_precision}
        if self.write:
            with self.path.open("a") as file:
                file.write(json.dumps(record) + "\n")
        self.loss_sums = {}
        self.window_steps = 0
        return record
