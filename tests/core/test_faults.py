"""Faults: the run-folder lock, atomic writes that never follow symlinks, verified weights-only checkpoints, exact
resume after a kill (in-process and with SIGKILL in a subprocess)."""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lit_efficiency.cli import CONF_DIR, main
from lit_efficiency.core.checkpoint import (
    SafeCheckpointIO,
    check_inside_dirpath,
    digest_path,
    load_checked,
    save_checked,
)
from lit_efficiency.core.errors import ConfigError, DataError
from lit_efficiency.core.lock import OutputLock
from lit_efficiency.core.paths import atomic_write_text, ensure_output_dir, refuse_symlinks

TINY = {
    "model": {"class_path": "tests.helpers.TinyRegressor"},
    "data": {"class_path": "tests.helpers.TinyRegressionData"},
    "trainer": {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False},
}


class KillAt(Callback):
    """SIGKILLs its own process at ``(epoch, batch)``, once: it leaves ``marker`` so that the rerun goes through."""

    def __init__(self, epoch: int, batch: int, marker: str) -> None:
        self.epoch, self.batch, self.marker = epoch, batch, Path(marker)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch) and not self.marker.exists():
            self.marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)


class _Planted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# ---------------------------------------------------------------- lock
def test_second_run_is_refused_naming_the_holder(tmp_path):
    with OutputLock(tmp_path):
        with pytest.raises(ConfigError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
            OutputLock(tmp_path).acquire()
    assert not (tmp_path / ".lock").exists()
    OutputLock(tmp_path).acquire()  # free again


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with OutputLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


def test_lock_of_another_host_is_respected(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "other-node"}))
    with pytest.raises(ConfigError, match="other-node"):
        OutputLock(tmp_path).acquire()


# ---------------------------------------------------------------- writes
def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "report.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_writes_never_follow_a_symlink(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").symlink_to(outside)
    with pytest.raises(ConfigError, match="symlink"):
        atomic_write_text(run / "report.json", "{}")
    with pytest.raises(ConfigError, match="symlink"):
        refuse_symlinks(run)
    with pytest.raises(ConfigError, match="symlink"):
        save_checked({"x": 1}, run / "report.json")
    assert outside.read_text() == "precious"


def test_output_dir_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        ensure_output_dir(tmp_path / "file")
    with pytest.raises(ConfigError, match="is a file"):
        ensure_output_dir(tmp_path / "file" / "sub")
    assert ensure_output_dir(tmp_path / "new" / "dir").is_dir()


def test_user_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert ensure_output_dir("~/out") == tmp_path / "out"


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_and_flipped_bit(tmp_path):
    path = save_checked({"state_dict": {"bias": torch.tensor([0.5, -1.0])}}, tmp_path / "last.ckpt")
    assert torch.equal(load_checked(path)["state_dict"]["bias"], torch.tensor([0.5, -1.0]))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="checksum mismatch"):
        load_checked(path)
    digest_path(path).unlink()
    with pytest.raises(DataError, match="no digest file"):
        load_checked(path)


def test_planted_checkpoint_runs_no_code_on_any_load_path(tmp_path):
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    pickle.dump({"state_dict": _Planted(marker)}, buffer)
    path = tmp_path / "evil.ckpt"
    path.write_bytes(buffer.getvalue())
    import hashlib

    digest_path(path).write_text(hashlib.sha256(buffer.getvalue()).hexdigest() + "  evil.ckpt\n")  # even "valid"
    with pytest.raises(DataError, match="weights-only"):
        load_checked(path)
    with pytest.raises(DataError, match="weights-only"):
        SafeCheckpointIO().load_checkpoint(path)
    with pytest.raises(DataError, match="weights_only=False"):
        SafeCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not marker.exists()


def test_restored_best_path_outside_the_folder_is_refused(tmp_path):
    callback = ModelCheckpoint(dirpath=tmp_path / "ckpts", monitor="val/loss")
    callback.best_model_path = str(tmp_path / "ckpts" / "best.ckpt")
    check_inside_dirpath(callback)
    callback.best_model_path = str(tmp_path / "ckpts" / ".." / "elsewhere.ckpt")
    with pytest.raises(DataError, match="outside the checkpoint folder"):
        check_inside_dirpath(callback)


def test_no_weights_only_false_in_the_package():
    root = Path(__file__).resolve().parents[2] / "lit_efficiency"
    offenders = [p for p in root.rglob("*.py") if "weights_only=False)" in p.read_text().replace(" ", "")]
    assert offenders == []


# ---------------------------------------------------------------- resume through the CLI (in-process)
def _fit(tmp_path, *extra):
    base = tmp_path / "tiny.yaml"
    base.write_text(yaml.safe_dump(TINY))
    main(["fit", "--config", str(base), "--trainer.default_root_dir", str(tmp_path / "runs"), *extra])


def _weights(last: Path) -> dict[str, torch.Tensor]:
    return load_checked(last)["state_dict"]


def test_last_ckpt_is_the_latest_epoch_even_with_a_monitored_best(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monitored = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"monitor": "val/loss", "mode": "max", "save_last": True},
    }  # best = the worst epoch
    cfg = tmp_path / "cb.yaml"
    cfg.write_text(yaml.safe_dump({"trainer": {"callbacks": [monitored]}}))
    _fit(tmp_path, "--config", str(cfg), "--trainer.max_epochs=4")
    folder = tmp_path / "runs/tiny/checkpoints"
    assert load_checked(folder / "last.ckpt")["global_step"] == 16  # 4 epochs of 4 batches: the latest
    (best,) = [p for p in folder.glob("epoch=*.ckpt")]
    assert load_checked(best)["global_step"] < 16  # the monitored best is an earlier one


def test_resume_in_process_gives_the_uninterrupted_weights(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fit(tmp_path, "--trainer.max_epochs=4", "--run_name=full")
    _fit(tmp_path, "--trainer.max_epochs=2", "--run_name=part")
    with pytest.raises(SystemExit) as exc:  # the same command without --ckpt_path would start over: refused
        _fit(tmp_path, "--trainer.max_epochs=4", "--run_name=part")
    assert exc.value.code == 2
    _fit(tmp_path, "--trainer.max_epochs=4", "--run_name=part", "--ckpt_path=last")
    full, part = (_weights(tmp_path / f"runs/{n}/checkpoints/last.ckpt") for n in ("full", "part"))
    assert full.keys() == part.keys() and all(torch.equal(full[k], part[k]) for k in full)
    assert not torch.equal(full["linear.weight"], torch.zeros_like(full["linear.weight"]))


# ---------------------------------------------------------------- SIGKILL in a subprocess
def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lit_efficiency", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_matches_uninterrupted_fit(tmp_path):
    kill = {"class_path": "tests.core.test_faults.KillAt",
            "init_args": {"epoch": 2, "batch": 1, "marker": str(tmp_path / "killed")}}  # fmt: skip
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({**TINY, "trainer": {**TINY["trainer"], "max_epochs": 4, "callbacks": [kill]}}))
    command = ["fit", "--config", str(cfg), "--trainer.default_root_dir", "runs", "--ckpt_path", "last"]
    cwd = os.getcwd()
    first = _cli(command, tmp_path)
    assert first.returncode == -signal.SIGKILL and (tmp_path / "killed").exists(), first.stderr[-2000:]
    assert load_checked(tmp_path / "runs/tiny/checkpoints/last.ckpt")["global_step"] == 8  # 2 finished epochs
    second = _cli(command, tmp_path)  # the same command
    assert second.returncode == 0, second.stderr[-2000:]
    os.chdir(tmp_path)  # the uninterrupted reference, in-process (the marker exists: no kill)
    try:
        main([*command, "--run_name", "reference"])
    finally:
        os.chdir(cwd)
    resumed, full = (_weights(tmp_path / f"runs/{n}/checkpoints/last.ckpt") for n in ("tiny", "reference"))
    assert all(torch.equal(resumed[k], full[k]) for k in full)


def test_epoch_seed_makes_each_epoch_independent_of_the_past():
    from lit_efficiency.core.checkpoint import EpochSeed

    class _T:
        current_epoch = 3

    L.seed_everything(0, verbose=False)
    EpochSeed(7).on_train_epoch_start(_T(), None)
    a = torch.rand(3)
    torch.rand(100)  # consume
    EpochSeed(7).on_train_epoch_start(_T(), None)
    assert torch.equal(a, torch.rand(3))


#: The smoke pipeline, smaller still: 3 steps per epoch, one timing batch.
PIPELINE = [
    "power-bert", "--config", str(CONF_DIR / "power_bert/smoke.yaml"), "--data.train_limit=48",
    "--data.eval_limit=16", "--data.max_seq_len=32", "--timing.batch_size=16", "--timing.repeats=1",
    "--search.epochs=3",
]  # fmt: skip


@pytest.mark.slow
def test_sigkill_in_the_search_stage_then_rerun_matches_uninterrupted_pipeline(tmp_path):
    main([*PIPELINE, f"--output_dir={tmp_path / 'reference'}"])
    reference = json.loads((tmp_path / "reference" / "report.json").read_text())
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "lit_efficiency", *PIPELINE, f"--output_dir={tmp_path / 'run'}"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "run" / "search" / "checkpoints" / "last.ckpt"
    try:
        while not last.exists() and proc.poll() is None:  # the search's first epoch is done: kill in its second
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        assert proc.wait(timeout=300) == -signal.SIGKILL, "the pipeline ended before it could be killed"
    assert not (tmp_path / "run" / "search" / "done.json").exists()
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert "search" in report["stages_resumed"] and report["stages_reused"] == ["finetune"]
    assert report["retention"] == reference["retention"]
    assert report["masses"] == pytest.approx(reference["masses"], rel=1e-5, abs=1e-7)  # float rounding of a resume
    assert report["all_metrics"] == reference["all_metrics"]
    assert report["training_metrics"] == reference["training_metrics"]


def test_a_kill_between_the_two_writes_of_a_save_leaves_a_verifiable_checkpoint(tmp_path):
    path = save_checked({"step": 1}, tmp_path / "last.ckpt")
    old = path.read_bytes()
    save_checked({"step": 2}, path)
    listed = digest_path(path).read_text()
    path.write_bytes(old)  # as if killed after the digest listed both, before the rename
    import hashlib

    new_digest = listed.split()[0]
    digest_path(path).write_text(f"{new_digest}  last.ckpt\n{hashlib.sha256(old).hexdigest()}  last.ckpt\n")
    assert load_checked(path)["step"] == 1


def test_launcher_gone_waits_for_the_dying_launcher_to_hand_this_rank_over(monkeypatch):
    """The socket error can come before the dead launcher stops being this rank's parent (seen under load)."""
    from lit_efficiency.core import faults

    launcher = 4242
    monkeypatch.setenv(faults.LAUNCHER_ENV, f"{launcher}:0")
    parents = iter([launcher, launcher, launcher, 1])  # reparented to init after three polls
    monkeypatch.setattr(faults.os, "getppid", lambda: next(parents))
    assert faults._launcher_gone(grace_s=5.0) == f"rank 0 (pid {launcher}, the launcher) is gone"
    monkeypatch.setattr(faults.os, "getppid", lambda: launcher)  # alive: another rank failed
    started = time.monotonic()
    assert faults._launcher_gone(grace_s=0.2) is None
    assert time.monotonic() - started >= 0.2
    monkeypatch.setenv(faults.LAUNCHER_ENV, f"{os.getpid()}:0")  # this process is the launcher
    assert faults._launcher_gone() is None
