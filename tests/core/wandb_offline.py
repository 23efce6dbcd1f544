"""Read an offline wandb run (``offline-run-*/run-*.wandb``) with wandb's own record definitions.

The file is wandb's transaction log: a 7-byte header (``:W&B``, magic, version), then LevelDB-log framed records
(32 KiB blocks; each chunk: CRC-32C, little-endian length, type FULL/FIRST/MIDDLE/LAST), each record a
``wandb_internal_pb2.Record`` protobuf. wandb >= 0.19 has no Python reader of its own (the Go core reads it).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What a run recorded: its identity, config, summary, history keys and artifacts."""

    name: str = ""
    group: str = ""
    job_type: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history_keys: set[str] = field(default_factory=set)
    artifacts: list[tuple[str, str, list[str]]] = field(default_factory=list)  # (name, type, file paths)


def _records(data: bytes):
    assert data[:4] == b":W&B", "not a wandb transaction log"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # block trailer: padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            yield pending


def _items(items) -> dict[str, Any]:
    out = {}
    for item in items:
        key = ".".join(item.nested_key) if item.nested_key else item.key
        out[key] = json.loads(item.value_json)
    return out


def read_offline_run(run_dir: Path) -> OfflineRun:
    """Parse the one ``run-*.wandb`` file of ``run_dir`` (after stopping this process's wandb service, which writes
    the file in blocks and may not have flushed the last one when ``wandb.finish()`` returns)."""
    import wandb
    from wandb.proto import wandb_internal_pb2 as pb

    wandb.teardown()

    [path] = Path(run_dir).glob("run-*.wandb")
    run = OfflineRun()
    for raw in _records(path.read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.name = record.run.display_name or run.name
            run.group, run.job_type = record.run.run_group or run.group, record.run.job_type or run.job_type
            run.config.update(_items(record.run.config.update))
        elif kind == "config":
            run.config.update(_items(record.config.update))
        elif kind == "summary":
            run.summary.update(_items(record.summary.update))
        elif kind == "history":
            run.history_keys |= {".".join(i.nested_key) or i.key for i in record.history.item}
        elif kind == "artifact":
            files = [entry.path for entry in record.artifact.manifest.contents]
            run.artifacts.append((record.artifact.name, record.artifact.type, files))
    return run
