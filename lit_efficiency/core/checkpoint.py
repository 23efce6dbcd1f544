"""Checkpoints that resume exactly and load safely.

* :class:`SafeCheckpointIO`: every checkpoint the trainer writes goes to a temp file in the same directory and is
  renamed into place (never through a symlink), followed by a ``<file>.sha256`` digest (``sha256sum`` format);
  every checkpoint it reads is checked against its digest first and loaded with ``weights_only=True`` (no code
  runs). A mismatch or a missing digest is a one-line :class:`~lit_efficiency.core.errors.DataError`.
* :class:`LastCheckpoint`: ``last.ckpt`` is the state at the end of the latest epoch (unmonitored; a monitored
  ``ModelCheckpoint`` with ``save_last`` may keep an older one).
* :class:`EpochSeed`: reseeds every RNG at the start of each epoch from ``(seed, epoch)``, so an epoch trained after
  a resume sees the same shuffling and dropout as in an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lit_efficiency.core.errors import DataError
from lit_efficiency.core.paths import atomic_write_bytes, atomic_write_text

DIGEST_SUFFIX = ".sha256"


def digest_path(path: str | os.PathLike) -> Path:
    """The digest file of checkpoint ``path`` (``last.ckpt`` -> ``last.ckpt.sha256``)."""
    path = Path(path)
    return path.with_name(path.name + DIGEST_SUFFIX)


def _listed_digests(sidecar: Path) -> list[str]:
    try:
        return [line.split()[0] for line in sidecar.read_text(encoding="utf-8", errors="replace").splitlines() if line]
    except OSError:
        return []


def save_checked(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` atomically to ``path`` and write its sha256 digest beside it.

    Crash-safe in every order of events: the digest file first lists the new digest and the one of the file being
    replaced, then the checkpoint is renamed into place, then the digest file lists the new digest only. A kill at any
    point leaves a checkpoint whose digest is listed.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    path = Path(path)
    sidecar = digest_path(path)
    new = hashlib.sha256(data).hexdigest()
    old = _listed_digests(sidecar)[:1] if path.is_file() else []
    atomic_write_text(sidecar, "".join(f"{h}  {path.name}\n" for h in [new, *old]))
    atomic_write_bytes(path, data)
    if old:
        atomic_write_text(sidecar, f"{new}  {path.name}\n")
    return path


def verify_checkpoint(path: str | os.PathLike) -> bytes:
    """Read checkpoint ``path`` and check it against its digest file; return its bytes.

    Raises:
        DataError: missing file or digest, or a digest mismatch (a corrupted or replaced file).
    """
    path = Path(path)
    if path.is_symlink():
        raise DataError(f"{path}: checkpoint is a symlink; refusing to follow it (copy the real file there)")
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    sidecar = digest_path(path)
    fix = f"delete {path} to start that stage again, or if you trust the file: sha256sum {path.name} > {sidecar.name}"
    if not sidecar.is_file():
        raise DataError(f"{path}: no digest file {sidecar.name} (written with every checkpoint); {fix}")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() not in _listed_digests(sidecar):
        raise DataError(f"{path}: checksum mismatch with {sidecar.name} (corrupted or replaced); {fix}")
    return data


def load_checked(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Verify ``path`` (:func:`verify_checkpoint`) and load it with ``weights_only=True``.

    Raises:
        DataError: verification failed, or the file is not a weights-only checkpoint (it would need code to load).
    """
    data = verify_checkpoint(path)
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: not a loadable weights-only checkpoint ({first}); delete it and rerun") from err


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: atomic writes with a sha256 digest, verified weights-only loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` and its digest (see :func:`save_checked`)."""
        if storage_options is not None:
            raise TypeError("SafeCheckpointIO does not take storage_options")
        save_checked(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Verify and load ``path``; ``weights_only=False`` is refused (it would let a checkpoint run code)."""
        if weights_only is False:
            raise DataError(f"{path}: refusing to load a checkpoint with weights_only=False")
        return load_checked(path, map_location=map_location)

    def remove_checkpoint(self, path: Any) -> None:
        """Remove the checkpoint and its digest."""
        super().remove_checkpoint(path)
        digest_path(path).unlink(missing_ok=True)


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` at the end of every training epoch, whatever is monitored elsewhere (keeps no other file).

    Args:
        dirpath: checkpoint folder; None = the trainer's (``<log dir>/checkpoints``).
    """

    def __init__(self, dirpath: str | os.PathLike | None = None) -> None:
        super().__init__(
            dirpath=dirpath, monitor=None, save_top_k=0, save_last=True, save_on_train_epoch_end=True,
            enable_version_counter=False,
        )  # fmt: skip

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write ``last.ckpt`` (Lightning 2.6 writes ``last`` only in a step where a top-k file was written)."""
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Refuse restored checkpoint paths outside their callback's folder (a resumed state names them)."""
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.dirpath:
                check_inside_dirpath(callback)


def check_inside_dirpath(callback: ModelCheckpoint) -> None:
    """Raise when a path in ``callback``'s state (best, k-th best, last) lies outside ``callback.dirpath``.

    Raises:
        DataError: such a path (it came from a resumed checkpoint's state and could point anywhere).
    """
    root = Path(callback.dirpath).resolve()
    named = [callback.best_model_path, callback.kth_best_model_path, callback.last_model_path, *callback.best_k_models]
    for path in filter(None, named):
        if not Path(path).resolve().is_relative_to(root):
            raise DataError(
                f"the resumed checkpoint's state names {path}, outside the checkpoint folder {root} (refused); "
                "resume from a checkpoint written by this run"
            )


def attach_run_dir(trainer: L.Trainer, run_dir: str | os.PathLike, seed: int | None) -> None:
    """Give ``trainer`` resumable, verified checkpoints in ``<run_dir>/checkpoints``.

    Installs :class:`SafeCheckpointIO`, points checkpoint callbacks without a ``dirpath`` at the folder, moves
    ``last.ckpt`` from them to one :class:`LastCheckpoint`, and adds :class:`EpochSeed` when ``seed`` is set.
    """
    folder = Path(run_dir) / "checkpoints"
    trainer.strategy.checkpoint_io = SafeCheckpointIO()
    callbacks = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
    for callback in callbacks:
        if callback.dirpath is None:
            callback.dirpath = str(folder.absolute())
        if not isinstance(callback, LastCheckpoint):
            callback.save_last = None  # a monitored callback's last.ckpt is not the latest epoch
    if callbacks and not any(isinstance(c, LastCheckpoint) for c in callbacks):
        trainer.callbacks.append(LastCheckpoint(callbacks[0].dirpath))
    if seed is not None:
        trainer.callbacks.append(EpochSeed(seed))


class EpochSeed(Callback):
    """Seed every RNG from ``(seed, epoch)`` before each training epoch draws its shuffling and dropout.

    Later epochs are seeded when they start (their data iterator is created after the hook). The first epoch of a
    resumed attempt gets its iterator before any epoch hook runs, so it is seeded when this callback's state is
    restored, and not again at its start (that would reseed between the iterator's two draws).

    Args:
        seed: base seed.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.next_epoch = 0
        self._seeded_epoch: int | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Seed for this epoch unless the restored state already did."""
        if trainer.current_epoch != self._seeded_epoch:
            self._seed(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Remember the next epoch (saved with the epoch-end checkpoint that follows)."""
        self.next_epoch = trainer.current_epoch + 1

    def state_dict(self) -> dict[str, Any]:
        """``{"next_epoch": ...}``."""
        return {"next_epoch": self.next_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """On resume, seed for the epoch that follows (Lightning's sanity check runs with the RNG isolated)."""
        self.next_epoch = int(state_dict.get("next_epoch", 0))
        self._seed(self.next_epoch)

    def _seed(self, epoch: int) -> None:
        L.seed_everything(self.seed + 1000 * epoch, workers=True, verbose=False)
        self._seeded_epoch = epoch
