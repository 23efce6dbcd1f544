"""Scale run through the CLI: ``lit-efficiency fit --config conf/dyn_gnn/scale_1b.yaml`` (1e9 edges), measured.

The script launches the CLI (peak RSS from ``getrusage(RUSAGE_CHILDREN)``: the largest process of the run, with
``--devices 2`` the largest rank), streams its output to a log (``outputs/scale/<name>-<time>/cli.log``: the
progress bars of the encoding and the epoch are there), timestamps the lines as they arrive and writes
``benchmarks/results/<name>.json`` with:

- ``wall_s`` (the whole command), ``encode_s`` (the data module's encoding pass, from its ``encode:`` line; with
  ``--devices 2`` every rank prints one, ``per_rank`` lists them and ``encode_s`` is the slowest rank's),
  ``epoch_s`` (from the last of those lines to the trainer's ``Trainer.fit stopped`` line: model setup, the epoch,
  the checkpoint);
- ``h2d_ms`` / ``rebuild_ms`` from the :class:`~lit_efficiency.dyn_gnn.profilers.TransferProfiler` summary line;
- ``peak_rss_gb`` (``ru_maxrss`` of the waited-for children), ``host_store_mb`` and the sizes.

A run still going (or cut off) is recorded with ``--partial RUN_DIR --pid PID``: ``status: running``, the last
state of both progress bars (done / total, elapsed, ETA) and the peak RSS so far (``VmHWM`` of the CLI process).

``benchmarks/plots.py`` draws ``scale_breakdown.png`` from ``scale.json``. Runs::

    python benchmarks/scale.py                                     # the 1e9-edge run (about 10 min on 2 idle cores)
    python benchmarks/scale.py --name scale_tiny --num-nodes 2000 --num-snapshots 6 --edges 20000   # seconds
    python benchmarks/scale.py --name scale_ddp2 --devices 2 --num-snapshots 12                    # gloo, 2 ranks
    python benchmarks/scale.py --name scale_ddp2_1e8 --devices 2 --edges 1000000     # 2 ranks, 1e8 edges (7 min)
    python benchmarks/scale.py --name scale_ddp2_1b --devices 2                      # 2 ranks, 1e9 edges (9 min)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from gpu_check import git_commit  # benchmarks/ is on sys.path: run as a script or imported by the tests

from lit_efficiency.core.paths import atomic_write_text
from lit_efficiency.core.timing import machine_busy

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CONFIG = ROOT / "conf" / "dyn_gnn" / "scale_1b.yaml"
ENCODE_LINE = re.compile(
    r"encode(?: \(rank (\d+) of \d+\))?: (\d+) snapshots, (\d+) edges, (\d+) nodes in ([\d.]+) s; "
    r"host store ([\d.]+) MiB"
)


def cli_command(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """The ``lit-efficiency fit`` command with the size and device overrides."""
    cmd = [sys.executable, "-m", "lit_efficiency", "fit", "--config", str(CONFIG)]
    sizes = {"num_nodes": args.num_nodes, "num_snapshots": args.num_snapshots, "edges_per_snapshot": args.edges}
    cmd += [f"--data.init_args.{k}={v}" for k, v in sizes.items() if v is not None]
    cmd += [f"--trainer.default_root_dir={run_dir}", f"--trainer.devices={args.devices}"]
    if args.devices > 1:
        cmd += [
            "--trainer.strategy=ddp",
            "--model.class_path=lit_efficiency.dyn_gnn.task_distributed.DistributedDynGNNTask",
            "--data.init_args.partitioner=snapshot",
        ]
    return cmd


def parse(lines: list[tuple[float, str]], start: float) -> dict:
    """Figures from the timestamped output lines (``None`` where a line is missing)."""
    out: dict = {"encode_s": None, "epoch_s": None, "h2d_ms": None, "rebuild_ms": None, "peak_rss_gb": None}
    t_encoded = None
    ranks: dict[int, dict] = {}
    for t, line in lines:
        if m := ENCODE_LINE.search(line):  # one line per rank; the epoch starts when the last rank has encoded
            ranks[int(m[1] or 0)] = {"encode_s": float(m[5]), "host_store_mb": round(float(m[6]) * 1.048576, 1)}
            out.update(num_snapshots=int(m[2]), edges_total=int(m[3]), num_nodes=int(m[4]))
            out.update(encode_s=max(r["encode_s"] for r in ranks.values()))
            out["host_store_mb"] = round(sum(r["host_store_mb"] for r in ranks.values()), 1)
            t_encoded = t
        if "`Trainer.fit` stopped" in line and t_encoded is not None:
            out["epoch_s"] = round(t - t_encoded, 1)
        if m := re.search(r"h2d ([\d.]+) ms, rebuild ([\d.]+) ms", line):
            out.update(h2d_ms=float(m[1]), rebuild_ms=float(m[2]))
    out["wall_s"] = round(lines[-1][0] - start, 1) if lines else None
    if len(ranks) > 1:
        out["per_rank"] = [ranks[r] for r in sorted(ranks)]
    return out


BAR = re.compile(r"(encode snapshots|Epoch 0): +(\d+)%\|[^|]*\| (\d+)/(\d+) \[([\d:]+)<([\d:?]+)")


def partial(run_dir: Path, pid: int | None, own_threads: int) -> dict:
    """Figures of a run not finished yet: the last state of each progress bar, the peak RSS so far."""
    text = (run_dir / "cli.log").read_text(errors="replace")
    load = os.getloadavg()[0]
    out: dict = {"status": "running", "log": str(run_dir.relative_to(ROOT) / "cli.log"), "device": "cpu"}
    out.update(machine_busy=machine_busy(own_threads, load), load_average_1min=round(load, 2))
    out["recorded_at"] = time.strftime("%H:%M:%S")
    for name, _, done, total, elapsed, eta in BAR.findall(text):
        key = "encode" if name.startswith("encode") else "epoch"
        out[key] = {"done": int(done), "total": int(total), "elapsed": elapsed, "eta": eta}
    out.update({k: v for k, v in parse([(0.0, line) for line in text.split("\n")], 0.0).items() if v is not None})
    out.pop("wall_s", None)
    if pid is not None:
        status = Path(f"/proc/{pid}/status").read_text()
        out["peak_rss_gb_so_far"] = round(int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) / 2**20, 3)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="scale", help="results/<name>.json and outputs/scale/<name>-<time>/")
    p.add_argument("--num-nodes", type=int, default=None, help="default: the config's (1M)")
    p.add_argument("--num-snapshots", type=int, default=None, help="default: the config's (100)")
    p.add_argument("--edges", type=int, default=None, help="edges per snapshot; default: the config's (10M)")
    p.add_argument("--devices", type=int, default=1, help="> 1: DDP over gloo, snapshot-partitioned + streamed")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--runs-dir", default=str(ROOT / "outputs" / "scale"), help="where the CLI run folders go")
    p.add_argument("--partial", type=Path, default=None, help="record the state of this unfinished run folder")
    p.add_argument("--pid", type=int, default=None, help="with --partial: the CLI process (peak RSS so far)")
    args = p.parse_args(argv)
    out = Path(args.out_dir) / f"{args.name}.json"
    if args.partial is not None:
        result = partial(args.partial.resolve(), args.pid, args.devices * int(os.environ.get("OMP_NUM_THREADS", "1")))
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return result
    run_dir = Path(args.runs_dir) / f"{args.name}-{time.strftime('%Y%m%d-%H%M%S')}"  # a new run every time
    run_dir.mkdir(parents=True)
    cmd = cli_command(args, run_dir)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    commit = git_commit()  # the code the run starts from (the checkout may move on while it runs)
    lines: list[tuple[float, str]] = []
    start = time.perf_counter()
    with (run_dir / "cli.log").open("w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        pending = ""
        while chunk := os.read(proc.stdout.fileno(), 1 << 16).decode(errors="replace"):
            log.write(chunk)  # as it comes: the progress bars redraw with carriage returns, not newlines
            log.flush()
            *done, pending = (pending + chunk).split("\n")
            lines += [(time.perf_counter(), line) for line in done]
        lines.append((time.perf_counter(), pending))
        rc = proc.wait()
    peak_rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: kilobytes
    load = os.getloadavg()[0]
    result = {
        "command": " ".join(["lit-efficiency fit --config", *cmd[cmd.index(str(CONFIG)) :]]),
        "returncode": rc,
        "git_commit": commit,
        "devices": args.devices,
        "device": "cpu",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, OMP_NUM_THREADS={env['OMP_NUM_THREADS']}",
        "machine_busy": machine_busy(args.devices * int(env["OMP_NUM_THREADS"]), load),
        "load_average_1min_at_end": round(load, 2),
        **parse(lines, start),
        "peak_rss_gb": round(peak_rss_kb / 2**20, 3),
    }
    result["command"] = result["command"].replace(str(ROOT) + os.sep, "")  # repository-relative paths
    result["peak_rss_note"] = "getrusage(RUSAGE_CHILDREN).ru_maxrss: the largest process (devices > 1: largest rank)"
    if rc != 0:  # the committed result of an earlier run stays; this one's record stays beside its log
        atomic_write_text(run_dir / "result.json", json.dumps(result, indent=2) + "\n")
        sys.exit(f"scale: the CLI run exited {rc}; {out} left as it was, see {run_dir / 'cli.log'}")
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
