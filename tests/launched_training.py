"""Run by the tests under `accelerate launch` (CPU processes on gloo): `launched_training.py OUT
RESUME [config overrides]` trains as configured (RESUME: none or latest) and writes what the tests
check into OUT/rank-N.json: the counted host reads and collectives per step (sync_counter) and
how DDP wrapped the model. With STALE_VIEW_RANK=N, process N lists the checkpoints as a node whose
view of a shared file system lags would: it sees only the oldest."""
import json
import os
import sys
from pathlib import Path

import pytest
from sync_counter import counted_syncs

from vlgen.training import distributed, load_config, train
from vlgen.training.checkpoint import list_checkpoints


def main():
    out, resume, *overrides = sys.argv[1:]
    config = load_config(overrides=overrides)
    rank = int(os.environ["RANK"])
    with pytest.MonkeyPatch.context() as patch:
        if os.environ.get("STALE_VIEW_RANK") == str(rank):
            patch.setattr(distributed, "latest_checkpoint", lambda output: list_checkpoints(output)[0])
        with counted_syncs(patch) as events:
            run = train(config, resume=None if resume == "none" else resume)
    model = run.model
    report = {"events": events, "step": run.step, "wrapper": type(model).__name__,
              "gradient_as_bucket_view": getattr(model, "gradient_as_bucket_view", None),
              "static_graph": getattr(model, "static_graph", None),
              "comm_hook": model._get_ddp_logging_data().get("comm_hook") if hasattr(model, "_get_ddp_logging_data")
              else None}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank-{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
