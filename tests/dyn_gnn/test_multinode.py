"""Two "nodes" on localhost (two launches with NODE_RANK=0|1, Trainer(num_nodes=2, devices=1)), and a crashed node.

Each node is ``tests/dyn_gnn/_dist_scripts/dyngnn_node.py`` in its own process, exactly as a user would launch it on two
machines (``MASTER_ADDR=127.0.0.1``). The reference is the plain single-process ``DynGNNTask`` on the plain
``SnapshotDataModule`` from the same initial weights. Every launch runs under a hard ``subprocess`` timeout, so a hang
fails the test instead of blocking it.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from lit_efficiency.dyn_gnn.datamodule import SnapshotDataModule
from lit_efficiency.dyn_gnn.task import DynGNNTask

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "dyn_gnn" / "_dist_scripts" / "dyngnn_node.py"
sys.path.insert(0, str(SCRIPT.parent))
from dyngnn_node import DATA, MODEL, Record  # noqa: E402

from lit_efficiency.core.trainer import quiet_trainer  # noqa: E402

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.slow,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch_nodes(args: list[str], timeout: float) -> list[tuple[int, str, float]]:
    """Start node 0 and node 1, wait for both (killing both past ``timeout``); return (code, output, seconds)."""
    port = _free_port()
    procs = []
    start = time.monotonic()
    for node_rank in (0, 1):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "NODE_RANK": str(node_rank),
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
        }
        for key in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "SLURM_NTASKS", "SLURM_JOB_NAME"):
            env.pop(key, None)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(SCRIPT), *args],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    results = []
    try:
        for proc in procs:
            left = max(1.0, timeout - (time.monotonic() - start))
            out, _ = proc.communicate(timeout=left)
            results.append((proc.returncode, out, time.monotonic() - start))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


def _reference(tmp_path: Path) -> tuple[Path, list[tuple[int, int, float]], dict]:
    torch.manual_seed(0)
    task = DynGNNTask(**MODEL)
    init = tmp_path / "init.pt"
    torch.save(copy.deepcopy(task.state_dict()), init)
    out = tmp_path / "ref"
    out.mkdir()
    trainer = quiet_trainer(
        max_epochs=2,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[Record(out)],
    )
    trainer.fit(task, SnapshotDataModule(**DATA))
    ref = torch.load(out / "rank0.pt")
    return init, ref["losses"], ref["state"]


@pytest.mark.timeout(150)
def test_two_node_localhost_run_matches_single_process(tmp_path):
    init, ref_losses, ref_state = _reference(tmp_path)
    results = _launch_nodes(["--out", str(tmp_path / "run"), "--init", str(init)], timeout=120)
    for code, out, _ in results:
        assert code == 0, out[-3000:]
    for rank in (0, 1):
        got = torch.load(tmp_path / "run" / f"rank{rank}.pt")
        assert [(e, s) for e, s, _ in got["losses"]] == [(e, s) for e, s, _ in ref_losses]
        got_losses, ref_values = [v for *_, v in got["losses"]], [v for *_, v in ref_losses]
        torch.testing.assert_close(torch.tensor(got_losses), torch.tensor(ref_values), rtol=1e-5, atol=1e-6)
        for name, value in ref_state.items():
            torch.testing.assert_close(got["state"][name], value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.timeout(240)
def test_dead_rank_fails_the_others_fast_and_rerun_resumes(tmp_path):
    """Rank 1 dies mid-epoch 1: rank 0 exits with a clear error within the timeout; the rerun resumes from last.ckpt."""
    timeout = 20.0
    init, ref_losses, ref_state = _reference(tmp_path)
    common = ["--out", str(tmp_path / "run"), "--init", str(init), "--ckpt-dir", str(tmp_path / "ckpt")]
    common += ["--timeout", str(timeout)]
    crashed = _launch_nodes([*common, "--die", "1", "1", "1"], timeout=timeout + 90)
    (code0, out0, seconds0), (code1, out1, _) = crashed
    assert seconds0 < timeout + 60  # startup + epoch 0 + at most the collective timeout: no hang
    assert code1 == 17 and "simulated crash at epoch 1 step 1" in out1
    assert code0 != 0, out0[-3000:]
    assert "rank 0:" in out0 and "failed (a peer rank died or timed out" in out0, out0[-3000:]
    assert "ckpt_path=last" in out0
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["epoch"] == 0

    resumed = _launch_nodes(common, timeout=120)
    for code, out, _ in resumed:
        assert code == 0, out[-3000:]
    got = torch.load(tmp_path / "run" / "rank0.pt")
    # Only epoch 1 ran again, from the epoch-0 checkpoint, and it reproduces the uninterrupted single process.
    assert [(e, s) for e, s, _ in got["losses"]] == [(e, s) for e, s, _ in ref_losses if e == 1]
    torch.testing.assert_close(
        torch.tensor([v for *_, v in got["losses"]]),
        torch.tensor([v for e, _, v in ref_losses if e == 1]),
        rtol=1e-5,
        atol=1e-6,
    )
    for name, value in ref_state.items():
        torch.testing.assert_close(got["state"][name], value, rtol=1e-4, atol=1e-5, msg=name)
