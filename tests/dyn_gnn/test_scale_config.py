"""``conf/dyn_gnn/scale_1b.yaml`` (the billion-edge run) at a tiny size through the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_scale_config_trains_one_epoch_at_tiny_size(tmp_path):
    tiny = [
        "--data.init_args.num_nodes=300",
        "--data.init_args.edges_per_snapshot=1000",
        "--data.init_args.num_snapshots=6",
    ]
    cmd = [sys.executable, "-m", "lit_efficiency", "fit", "--config", str(ROOT / "conf" / "dyn_gnn" / "scale_1b.yaml")]
    proc = subprocess.run(
        [*cmd, *tiny, f"--trainer.default_root_dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "`Trainer.fit` stopped: `max_epochs=1` reached." in proc.stderr + proc.stdout
    out = proc.stderr + proc.stdout
    encode = [line for line in out.splitlines() if line.startswith("encode: 6 snapshots, 6000 edges, 300 nodes")]
    assert encode and "smaller than full snapshots" in encode[0]  # the streaming source was encoded in one pass
    assert "encode snapshots: 100%" in out and "Epoch 0: 100%" in out  # progress bars of the encoding and the epoch
    transfer = [line for line in out.splitlines() if line.startswith("transfer:")]
    assert transfer and "fewer than full snapshots" in transfer[0]  # the diff-encoded stream was used
