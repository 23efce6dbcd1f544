"""One node of a multi-node snapshot-partitioned DDP run (launched twice by tests/test_multinode.py).

Environment: ``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK`` (Lightning's default cluster environment), as a user would
set them by hand or as torchrun / SLURM do. Writes ``rank<r>.pt`` (per-step logged global loss, final weights) into
``--out``. ``--die-rank/--die-epoch/--die-step`` make one rank exit abruptly before that training step (a crashed
node); ``--ckpt-dir`` keeps ``last.ckpt`` at every epoch end and a rerun resumes from it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy

from lit_efficiency.core.errors import LitEfficiencyError
from lit_efficiency.core.trainer import quiet_trainer
from lit_efficiency.dyn_gnn.partitioned import PartitionedSnapshotDataModule
from lit_efficiency.dyn_gnn.task_distributed import DistributedDynGNNTask
from tests.helpers import DIST_DATA, DIST_MODEL

# Shared with the tests (they import these to build the single-process reference).
DATA, MODEL = DIST_DATA, DIST_MODEL


class Record(L.Callback):
    """Per training step the logged (global) loss; at the end of fit the weights, written per rank."""

    def __init__(self, out: Path, die: tuple[int, int, int] | None = None) -> None:
        self.out = out
        self.die = die
        self.losses: list[tuple[int, int, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.die == (trainer.global_rank, trainer.current_epoch, batch_idx):
            print(f"rank {trainer.global_rank}: simulated crash at epoch {trainer.current_epoch} step {batch_idx}")
            sys.stdout.flush()
            os._exit(17)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append((trainer.current_epoch, batch_idx, float(trainer.callback_metrics["train/loss_step"])))

    def on_fit_end(self, trainer, pl_module) -> None:
        state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        torch.save({"losses": self.losses, "state": state}, self.out / f"rank{trainer.global_rank}.pt")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--init", type=Path, help="state_dict to start from (same as the reference's)")
    parser.add_argument("--num-nodes", type=int, default=2)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--max-epochs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=30.0, help="collective timeout, seconds")
    parser.add_argument("--ckpt-dir", type=Path)
    parser.add_argument("--die", type=int, nargs=3, metavar=("RANK", "EPOCH", "STEP"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)

    task = DistributedDynGNNTask(redistribution_timeout_s=args.timeout, **MODEL)
    if args.init is not None:
        task.load_state_dict(torch.load(args.init))
    callbacks: list[L.Callback] = [Record(args.out, tuple(args.die) if args.die else None)]
    ckpt_path = None
    if args.ckpt_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=args.ckpt_dir, save_last=True, every_n_epochs=1))
        last = args.ckpt_dir / "last.ckpt"
        ckpt_path = str(last) if last.is_file() else None
    trainer = quiet_trainer(
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=DDPStrategy(process_group_backend="gloo", timeout=datetime.timedelta(seconds=args.timeout)),
        max_epochs=args.max_epochs,
        enable_checkpointing=args.ckpt_dir is not None,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=callbacks,
    )
    try:
        trainer.fit(task, PartitionedSnapshotDataModule(**DATA), ckpt_path=ckpt_path)
    except LitEfficiencyError as err:
        print(f"lit-efficiency: error: {err}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(2)  # do not wait on a process group whose peer is gone
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
