"""Distributed faults: when a rank dies, every other rank ends with one line that names it and says how to resume.

Lightning's subprocess launcher (``DDPStrategy`` with the default ``start_method="popen"``: the process the user
started is rank 0 and re-runs the same command for ranks 1..n-1) watches its children with a thread that SIGKILLs
every process, the launcher included, when a child exits non-zero: the user sees a silent ``-9``, or a raw gloo
traceback when a collective failed first. Here instead:

* :class:`WatchedLauncher` starts the ranks as Lightning does, without that thread, and tells them the launcher's
  pid and rank (:data:`LAUNCHER_ENV`), so a rank whose launcher is gone can name it;
* :func:`rank_failures_reported` turns a failed collective or rendezvous (a peer died, or did not answer within the
  collective timeout: the strategy's ``timeout``, the task's own group timeouts) into one :class:`RankFailure` line
  naming the rank, the dead rank when known, the backend's cause and the command that resumes the run
  (``--ckpt_path last --run_name <run>``). The launcher then closes its process groups (the ranks still waiting on
  it fail at once instead of at the timeout), waits for its children within the timeout so that their lines come
  first, and kills any left over.

Ranks that never meet (``--trainer.num_nodes 2`` started on one node, a wrong ``MASTER_PORT`` or ``NODE_RANK``) end
at the rendezvous timeout with one line saying what to check (nothing ran, so no rerun command); torch's C++ socket
warnings and stack dumps are kept off the console by :mod:`lit_efficiency.core.native_logs`.

The timeouts bound every wait: a dead peer is usually seen at once (its sockets close), a silent one at the timeout.

With ``start_method="spawn"`` (``conf/trainer/ddp_cpu.yaml``) the process the user started is no rank: it waits for the
ranks and torch stops the others when one dies; it ends with one line naming the dead rank and the rerun command.
:class:`QuietSpawnLauncher` keeps the survivors silent meanwhile: a rank whose collective failed because a peer died
exits at once (exit code :data:`PEER_FAILED_EXIT`, no traceback, SIGTERM from torch no longer runs Lightning's
broadcasting handler), and the spawned ranks drop the same library noise as the launcher
(:func:`~lit_efficiency.core.quiet.quiet_libraries`).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from lit_efficiency.core.errors import LitEfficiencyError
from lit_efficiency.core.quiet import quiet_libraries

#: Environment variable the launcher sets for the ranks it starts: ``"<pid>:<global rank>"``.
LAUNCHER_ENV = "LIT_EFFICIENCY_LAUNCHER"

#: Words of backend errors that mean a peer is gone or silent (gloo, NCCL, the c10d store).
_PEER_WORDS = ("gloo", "nccl", "connection", "timed out", "timeout", "broken pipe", "peer", "c10d", "socket")

#: Seconds a launcher waits for its ranks when the strategy has no timeout.
DEFAULT_WAIT_S = 60.0

#: Exit code of a spawned rank whose collective failed because a peer died or went silent.
PEER_FAILED_EXIT = 75


class RankFailure(LitEfficiencyError, RuntimeError):
    """A rank of a distributed run died or stopped answering: the others end with this one line."""


class WatchedLauncher(_SubprocessScriptLauncher):
    """Lightning's subprocess launcher without its child observer (module docstring); it can describe its ranks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stopped: set[int] = set()  # children this launcher killed after the timeout

    def launch(self, function: Any, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        """Start ranks 1..n-1 of this node (unless the cluster starts them), then run ``function`` as rank 0."""
        self.cluster_environment.validate_settings(num_devices=self.num_processes, num_nodes=self.num_nodes)
        if not self.cluster_environment.creates_processes_externally:
            os.environ[LAUNCHER_ENV] = f"{os.getpid()}:{self.cluster_environment.global_rank()}"
            self._call_children_scripts()
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)

    def _rank_of(self, index: int) -> int:
        return self.cluster_environment.node_rank() * self.num_processes + index + 1

    def failed_ranks(self) -> list[str]:
        """``rank R (pid P) was killed by SIGKILL`` / ``... exited with code C`` / ``... did not end within the
        timeout (stopped)`` for each child that failed; deaths by a signal first (the exits are their consequence)."""
        out = []
        for index, proc in enumerate(self.procs):
            code = proc.poll()
            if not code:
                continue
            if index in self._stopped:
                how, order = "did not end within the timeout (stopped by the launcher)", 2
            elif code < 0:
                how, order = f"was killed by {signal.Signals(-code).name}", 0
            else:
                how, order = f"exited with code {code}", 1
            out.append((order, f"rank {self._rank_of(index)} (pid {proc.pid}) {how}"))
        return [text for _, text in sorted(out)]

    def wait_for_ranks(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for every child to end, then SIGKILL those left."""
        deadline = time.monotonic() + timeout_s
        for index, proc in enumerate(self.procs):
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._stopped.add(index)
                proc.kill()
                proc.wait()


class QuietSpawnLauncher(_MultiProcessingLauncher):
    """Lightning's spawn launcher whose ranks end silently when a peer died (module docstring)."""

    def _wrapping_function(self, *args: Any, **kwargs: Any) -> None:
        quiet_libraries()
        try:
            super()._wrapping_function(*args, **kwargs)
        except BaseException as err:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # torch's SIGTERM to the survivors: just end
            if not isinstance(err, Exception) or backend_cause(err) is None:
                raise  # a real error: torch hands its traceback to the launcher
            os._exit(PEER_FAILED_EXIT)


def use_watched_launcher(strategy: Any) -> None:
    """Give ``strategy`` a :class:`WatchedLauncher` (subprocess) or :class:`QuietSpawnLauncher` (spawn, fork) in place
    of Lightning's launcher (others untouched)."""
    launcher = getattr(strategy, "_launcher", None)
    if type(launcher) is _SubprocessScriptLauncher:
        strategy._launcher = WatchedLauncher(launcher.cluster_environment, launcher.num_processes, launcher.num_nodes)
    elif type(launcher) is _MultiProcessingLauncher:
        strategy._launcher = QuietSpawnLauncher(strategy, start_method=launcher._start_method)


def backend_cause(err: BaseException) -> str | None:
    """The backend's words if ``err`` (or an error in its chain) is a failed collective or rendezvous, else ``None``.

    The first line only, without gloo's source-location prefix and its generic advice.
    """
    import torch.distributed as dist

    seen: set[int] = set()
    pending: list[BaseException | None] = [err]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        text = str(current).strip()
        lowered = text.lower()
        ours = isinstance(current, LitEfficiencyError)  # a task's own wrapper: its cause has the backend's words
        if not ours and (
            isinstance(current, dist.DistError)
            or (isinstance(current, RuntimeError) and any(word in lowered for word in _PEER_WORDS))
        ):
            first = text.splitlines()[0] if text else type(current).__name__
            first = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", first)
            return first.split(" This is typically caused by")[0].strip().rstrip(".")
        pending += [current.__cause__, current.__context__]
    return None


def rerun_command(argv: Sequence[str], run_name: str) -> str:
    """``lit-efficiency <argv>`` with ``--ckpt_path last --run_name <run_name>`` (replacing any given)."""
    kept: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        key = token.partition("=")[0]
        if key in ("--ckpt_path", "--run_name"):
            skip = "=" not in token
            continue
        kept.append(token)
    return shlex.join(["lit-efficiency", *kept, "--ckpt_path", "last", "--run_name", run_name])


def _spawned_rank_failure(err: BaseException, procs: Sequence[Any] = ()) -> tuple[str, bool] | None:
    """What a rank started by ``torch.multiprocessing`` (``start_method="spawn"``) did, seen by the launcher.

    Args:
        err: what torch raised in the launcher.
        procs: the rank processes (ended): a rank killed by a signal other than torch's SIGTERM is named first,
            whichever rank torch noticed first (a survivor's failed collective can end it before the launcher sees
            the death).

    Returns ``(text, resumable)``: a rank killed or one whose collective failed can be resumed; a rank that raised
    another error (its last traceback line is kept) cannot.
    """
    import torch.multiprocessing as mp

    if not isinstance(err, mp.ProcessExitedException | mp.ProcessRaisedException):
        return None
    killed = [(i, p) for i, p in enumerate(procs) if (p.exitcode or 0) < 0 and -p.exitcode != signal.SIGTERM]
    if killed:
        index, proc = killed[0]
        return f"rank {index} (pid {proc.pid}) was killed by {signal.Signals(-proc.exitcode).name}", True
    if isinstance(err, mp.ProcessExitedException) and err.exit_code == PEER_FAILED_EXIT:
        return f"rank {err.error_index} (pid {err.error_pid}) lost a peer rank (died or timed out)", True
    if isinstance(err, mp.ProcessExitedException):
        how = f"was killed by {err.signal_name}" if err.signal_name else f"exited with code {err.exit_code}"
        return f"rank {err.error_index} (pid {err.error_pid}) {how}", True
    last = [line.strip() for line in str(err).splitlines() if line.strip()][-1]  # a ProcessRaisedException
    resumable = any(word in last.lower() for word in _PEER_WORDS)
    return f"rank {err.error_index} (pid {err.error_pid}) failed: {last}", resumable


def _launcher_gone(grace_s: float = 5.0) -> str | None:
    """``rank R (pid P, the launcher) is gone`` when this rank was started by a launcher that has died.

    A dying process closes its sockets before its children are handed to a new parent, so the backend error that
    brought this rank here can arrive while the dead launcher is still its parent: wait up to ``grace_s`` for that.
    """
    pid, _, rank = os.environ.get(LAUNCHER_ENV, "").partition(":")
    if not pid.isdigit() or int(pid) == os.getpid():
        return None
    deadline = time.monotonic() + grace_s
    while os.getppid() == int(pid):
        if time.monotonic() >= deadline:
            return None  # the launcher is alive: another rank failed
        time.sleep(0.05)
    return f"rank {rank} (pid {pid}, the launcher) is gone"


def _wait_s(strategy: Any) -> float:
    timeout = getattr(strategy, "_timeout", None)
    return timeout.total_seconds() if isinstance(timeout, timedelta) else DEFAULT_WAIT_S


def _process_group_started() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _rendezvous_failure(world_size: int, cause: str) -> str:
    """What to check when the ranks never met: nothing ran, so there is nothing to resume."""
    where = f"{os.environ.get('MASTER_ADDR', '127.0.0.1')}:{os.environ.get('MASTER_PORT', '?')}"
    return (
        f"the {world_size} ranks did not all reach the rendezvous at {where} within the timeout (backend error: "
        f"{cause}); start one process per node with the same --trainer.num_nodes and --trainer.devices, NODE_RANK "
        "0..num_nodes-1, and the same MASTER_ADDR and MASTER_PORT on every node"
    )


def _close_process_groups() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def rank_failures_reported(trainer: Any, argv: Sequence[str], run_name: str) -> Iterator[None]:
    """Run a distributed ``fit`` so that a failed collective ends this rank with one :class:`RankFailure` line.

    A single process runs unchanged. On success the launcher waits for its ranks (within the timeout) and reports
    one that failed.

    Raises:
        RankFailure: a collective or rendezvous failed, or a rank the launcher started failed.
    """
    if trainer.world_size == 1:
        yield
        return
    launcher = trainer.strategy.launcher
    rerun = rerun_command(argv, run_name)
    try:
        yield
    except Exception as err:
        spawned = _spawned_rank_failure(err, launcher.procs if isinstance(launcher, _MultiProcessingLauncher) else ())
        if spawned is not None:  # the spawn launcher: the ranks are its children, it is none of them
            text, resumable = spawned
            raise RankFailure(f"launcher: {text}" + (f"; rerun: {rerun}" if resumable else "")) from None
        cause = backend_cause(err)
        if cause is None:
            raise
        watched = launcher if isinstance(launcher, WatchedLauncher) and launcher.procs else None
        met = _process_group_started()
        if watched is not None:
            _close_process_groups()  # ranks still waiting on this one fail now, not at the timeout
            watched.wait_for_ranks(_wait_s(trainer.strategy))
        gone = _launcher_gone()
        dead = (watched.failed_ranks() if watched else []) or ([gone] if gone else [])
        if not dead and not met:
            raise RankFailure(f"rank {trainer.global_rank}: {_rendezvous_failure(trainer.world_size, cause)}") from None
        dead = dead or ["a peer rank died or timed out"]
        raise RankFailure(
            f"rank {trainer.global_rank}: {'; '.join(dead)} (backend error: {cause}); rerun: {rerun}"
        ) from None
    if isinstance(launcher, WatchedLauncher) and launcher.procs:
        launcher.wait_for_ranks(_wait_s(trainer.strategy))
        failed = launcher.failed_ranks()
        if failed:
            raise RankFailure(f"rank {trainer.global_rank}: {'; '.join(failed)}; rerun: {rerun}")
