r"""Where a dynamic graph comes from: the *source* part of the snapshot data module.

A source turns files (or a generator) into a :class:`~lit_efficiency.dyn_gnn.graph.DynamicGraph` of raw snapshots
(edge-life windows, normalisation and targets are the data module's business). Chosen in YAML by ``class_path``::

    data:
      init_args:
        source:
          class_path: lit_efficiency.dyn_gnn.sources.EdgeListSource
          init_args: {path: edges.csv, step_size: 86400}

Every source answers two questions (:class:`GraphSource`):

- :meth:`GraphSource.edge_counts`: the edge count of every *model input* snapshot (after the edge-life window),
  which the snapshot partitioner balances;
- :meth:`GraphSource.load`: the graph, where only the snapshots in ``snapshots`` need edges (the others may be left
  empty). A snapshot-partitioned rank asks only for its block; :class:`EdgeListSource`, :class:`PGTJsonSource` and
  :class:`SyntheticChurnSource` then build only those snapshots (the churn generator never holds the others at all),
  the other sources load the whole graph and drop the rest.

Sources provided: :class:`DatasetSource` (the built-in datasets), :class:`EdgeListSource` (CSV / TSV / whitespace
edge lists with optional node-feature and node-target files), :class:`PGTJsonSource` (the JSON layouts of PyTorch
Geometric Temporal's datasets), :class:`PyGSource` (a ``torch.save``-d list of PyG ``Data`` dicts or a
``TemporalData`` dict), :class:`SyntheticSource` (planted communities, learnable) and :class:`SyntheticChurnSource`
(the streaming power-law churn generator). Bad input is a :class:`~lit_efficiency.core.errors.DataError` of one line
naming the file and the row (or JSON key). Pure PyTorch (no Lightning).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import re
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lit_efficiency.core.errors import ConfigError, DataError
from lit_efficiency.dyn_gnn.adjacency import edge_key
from lit_efficiency.dyn_gnn.graph import DynamicGraph, _group_snapshots, coalesce_edges

__all__ = [
    "DatasetSource",
    "EdgeListSource",
    "GraphSource",
    "PGTJsonSource",
    "PyGSource",
    "SyntheticChurnSource",
    "SyntheticSource",
    "blank_snapshots",
]

#: Largest integer a float64 holds exactly: ids beyond it would be rounded when parsed as floats.
EXACT_FLOAT_INT = 2**53


def blank_snapshots(graph: DynamicGraph, snapshots: Collection[int] | None) -> DynamicGraph:
    """``graph`` with the edges of every snapshot not in ``snapshots`` removed (``x``, ``y`` kept whole)."""
    if snapshots is None:
        return graph
    keep = set(snapshots)

    def blank(items: list[Tensor] | None) -> list[Tensor] | None:
        if items is None:
            return None
        return [v if t in keep else v[..., :0] for t, v in enumerate(items)]

    return dataclasses.replace(
        graph,
        edge_indices=blank(graph.edge_indices),
        edge_weights=blank(graph.edge_weights),
        edge_labels=blank(graph.edge_labels),
    )


def _windowed_counts(graph: DynamicGraph, window: int) -> list[int]:
    return graph.with_window(window).num_edges_per_snapshot


class GraphSource:
    """Base class of the graph sources (see the module docstring). Subclasses implement :meth:`load`."""

    #: Sources that build only the requested snapshots (a partitioned rank then never holds the others).
    reads_blocks: bool = False

    @property
    def name(self) -> str:
        """What the graph is called in messages (file or dataset name)."""
        return type(self).__name__

    def prepare(self) -> None:
        """Fetch what must be fetched once per node before :meth:`load` (default: nothing)."""

    def load(self, snapshots: Collection[int] | None = None) -> DynamicGraph:
        """The raw dynamic graph; snapshots outside ``snapshots`` (when given) may be left without edges."""
        raise NotImplementedError

    def edge_counts(self, window: int) -> list[int]:
        """Edges of every model input snapshot after an edge-life window ``window`` (what the partitioner balances)."""
        return _windowed_counts(self.load(), window)


# ---------------------------------------------------------------------------------------------- built-in data


class DatasetSource(GraphSource):
    """A built-in dataset (:data:`~lit_efficiency.dyn_gnn.datasets.DATASETS`), found locally or downloaded.

    Args:
        name: ``bitcoin_otc``, ``bitcoin_alpha``, ``uci_messages``, ``chess`` or ``twitter_tennis``.
        data_dir: data root holding ``graphs/<name>/``; default ``$LIT_EFFICIENCY_DATA`` or ``../shared/data``.
        num_steps: number of equal-width time steps (default: the dataset's step size).
        step_size: step width in seconds.
    """

    def __init__(
        self, name: str, data_dir: str | None = None, num_steps: int | None = None, step_size: float | None = None
    ) -> None:
        from lit_efficiency.dyn_gnn.datasets import DATASETS

        if name not in DATASETS:
            raise ConfigError(f"data.source: unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
        self.dataset, self.data_dir, self.num_steps, self.step_size = name, data_dir, num_steps, step_size
        self._graph: DynamicGraph | None = None

    @property
    def name(self) -> str:
        return self.dataset

    def prepare(self) -> None:
        from lit_efficiency.dyn_gnn.datasets import dataset_file

        dataset_file(self.dataset, self.data_dir)

    def _full(self) -> DynamicGraph:
        from lit_efficiency.dyn_gnn.datasets import load_dataset

        if self._graph is None:
            self._graph = load_dataset(
                self.dataset, data_dir=self.data_dir, num_steps=self.num_steps, step_size=self.step_size
            )
        return self._graph

    def load(self, snapshots: Collection[int] | None = None) -> DynamicGraph:
        graph = blank_snapshots(self._full(), snapshots)
        self._graph = None  # the data module keeps what it needs; do not hold a second copy
        return graph

    def edge_counts(self, window: int) -> list[int]:
        return _windowed_counts(self._full(), window)


class SyntheticSource(GraphSource):
    """Planted communities + edge persistence (:func:`~lit_efficiency.dyn_gnn.synthetic.synthetic_link_graph`).

    Links are learnable; edge signs are ``+1`` inside a community and ``-1`` across (edge-sign task); ``y`` is the
    community (node regression).

    Args:
        num_nodes: ``N``.
        num_snapshots: ``T``.
        edges_per_snapshot: edges per step.
        churn: ``1 - persistence``: fraction of edges replaced per step.
        num_communities: planted communities.
        num_node_features: node feature size (0: none, the model learns an embedding).
        seed: seed.
    """

    def __init__(
        self,
        num_nodes: int = 200,
        num_snapshots: int = 12,
        edges_per_snapshot: int = 800,
        churn: float = 0.3,
        num_communities: int = 4,
        num_node_features: int = 8,
        seed: int = 0,
    ) -> None:
        self.kwargs = {
            "num_nodes": num_nodes,
            "num_snapshots": num_snapshots,
            "edges_per_snapshot": edges_per_snapshot,
            "num_communities": num_communities,
            "persistence": 1.0 - churn,
            "num_features": num_node_features,
            "seed": seed,
        }

    @property
    def name(self) -> str:
        return "synthetic"

    def load(self, snapshots: Collection[int] | None = None) -> DynamicGraph:
        from lit_efficiency.dyn_gnn.synthetic import synthetic_link_graph

        graph = synthetic_link_graph(**self.kwargs)
        community = torch.arange(graph.num_nodes) % self.kwargs["num_communities"]
        signs = [torch.where(community[ei[0]] == community[ei[1]], 1, -1) for ei in graph.edge_indices]
        return blank_snapshots(dataclasses.replace(graph, edge_labels=signs).validate(), snapshots)


class SyntheticChurnSource(GraphSource):
    """The power-law churn model, generated snapshot by snapshot (:func:`~lit_efficiency.dyn_gnn.synthetic.
    iter_synthetic_snapshots`): a rank keeps only the snapshots it asks for, so no process ever holds the others.

    Args:
        num_nodes: ``N``.
        num_snapshots: ``T``.
        edges_per_snapshot: distinct edges per step.
        churn: fraction of edges replaced per step.
        num_node_features: size of static standard-normal node features (0: none).
        power_law: degree-tail exponent.
        seed: seed.
    """

    reads_blocks = True

    def __init__(
        self,
        num_nodes: int = 200,
        num_snapshots: int = 12,
        edges_per_snapshot: int = 800,
        churn: float = 0.3,
        num_node_features: int = 8,
        power_law: float = 2.1,
        seed: int = 0,
    ) -> None:
        self.num_nodes, self.num_snapshots, self.edges_per_snapshot = num_nodes, num_snapshots, edges_per_snapshot
        self.churn, self.num_node_features, self.power_law, self.seed = churn, num_node_features, power_law, seed

    @property
    def name(self) -> str:
        return "synthetic_churn"

    def _stream(self, window: int):
        from lit_efficiency.dyn_gnn.synthetic import iter_synthetic_snapshots

        return iter_synthetic_snapshots(
            self.num_nodes,
            self.num_snapshots,
            self.edges_per_snapshot,
            churn=self.churn,
            window=window,
            power_law=self.power_law,
            seed=self.seed,
        )

    def edge_counts(self, window: int) -> list[int]:
        return [int(snap.edge_index.shape[1]) for snap in self._stream(window)]

    def load(self, snapshots: Collection[int] | None = None) -> DynamicGraph:
        keep = None if snapshots is None else set(snapshots)
        empty = torch.zeros((2, 0), dtype=torch.long)
        edge_indices = [
            snap.edge_index if keep is None or t in keep else empty for t, snap in enumerate(self._stream(1))
        ]
        x = None
        if self.num_node_features > 0:
            x = torch.randn(
                self.num_nodes, self.num_node_features, generator=torch.Generator().manual_seed(self.seed + 1)
            )
        return DynamicGraph(num_nodes=self.num_nodes, edge_indices=edge_indices, x=x, name=self.name).validate()


# ---------------------------------------------------------------------------------------------- edge lists


#: Data rows parsed at a time by the edge-list reader (its memory is a few chunks, not the file).
CHUNK_ROWS = 1 << 16


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(1-based line number, line)`` of a UTF-8 text file (gzip detected by its magic bytes), read lazily."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, "rb") as handle:
        gz = handle.read(2) == b"\x1f\x8b"
    lineno = 0
    try:
        with gzip.open(path, "rb") if gz else open(path, "rb") as handle:
            for lineno, raw in enumerate(handle, start=1):
                yield lineno, raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}:{lineno}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: corrupt gzip file ({err})") from None


def _iter_tables(path: Path, sep: str | None, header: bool | None, chunk_rows: int = CHUNK_ROWS) -> Iterator[_Table]:
    """The data rows of a delimited text file, ``chunk_rows`` at a time (the header is passed to every chunk).

    Rows whose first character is ``#`` or ``%`` and blank lines are skipped; a first row without any numeric field
    is a header (or as ``header`` says).

    Raises:
        DataError: a row with another number of columns than the first, or no data row (names the file and line).
    """
    names: list[str] | None = None
    width: int | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    for lineno, line in _text_lines(path):
        stripped = line.strip()
        if not stripped or stripped[0] in "%#":
            continue
        fields = [f.strip() for f in (stripped.split(sep) if sep is not None else stripped.split())]
        if width is None and names is None and _is_header(fields, header):
            names = fields
            continue
        if width is None:
            width = len(fields)
        elif len(fields) != width:
            raise DataError(f"{path}:{lineno}: expected {width} columns, got {len(fields)}")
        rows.append(fields)
        lines.append(lineno)
        if len(rows) >= chunk_rows:
            yield _Table(path, names, rows, lines)
            rows, lines = [], []
    if width is None:
        raise DataError(f"{path}: no data rows")
    if rows:
        yield _Table(path, names, rows, lines)


class _Table:
    """Rows of string fields of a delimited text file (a chunk of it), with the 1-based line number of every row."""

    def __init__(self, path: Path, names: list[str] | None, rows: list[list[str]], lines: list[int]) -> None:
        self.path, self.names, self.rows, self.lines = path, names, rows, lines

    @classmethod
    def read(cls, path: Path, sep: str | None, header: bool | None) -> _Table:
        """The whole file as one table."""
        chunks = list(_iter_tables(path, sep, header))
        return cls(path, chunks[0].names, [r for c in chunks for r in c.rows], [n for c in chunks for n in c.lines])

    def subset(self, keep: np.ndarray) -> _Table:
        """The rows where the boolean mask ``keep`` is true."""
        idx = np.flatnonzero(keep).tolist()
        return _Table(self.path, self.names, [self.rows[i] for i in idx], [self.lines[i] for i in idx])

    def column(self, spec: int | str, what: str) -> int:
        """Index of the column given by position or header name."""
        width = len(self.rows[0])
        if isinstance(spec, str):
            if self.names is None or spec not in self.names:
                found = ", ".join(self.names) if self.names else "no header line"
                raise ConfigError(f"{self.path}: {what} column {spec!r} not found ({found})")
            return self.names.index(spec)
        if not 0 <= spec < width:
            raise ConfigError(f"{self.path}: {what} column {spec} outside the {width} columns")
        return spec

    def label(self, col: int) -> str:
        return self.names[col] if self.names else f"column {col}"

    def ints(self, col: int) -> np.ndarray:
        """Exact integer values of a column (never through float: ids above 2**53 stay exact)."""
        out = np.empty(len(self.rows), dtype=np.int64)
        for i, row in enumerate(self.rows):
            try:
                out[i] = int(row[col])
            except (ValueError, OverflowError):
                raise DataError(
                    f"{self.path}:{self.lines[i]}: {self.label(col)} value {row[col]!r} is not an integer that fits"
                    " in int64"
                ) from None
        return out

    def floats(self, col: int) -> np.ndarray:
        """Finite float64 values of a column."""
        try:
            values = np.array([row[col] for row in self.rows], dtype=np.float64)
        except ValueError:
            values = np.full(len(self.rows), np.nan)
            for i, row in enumerate(self.rows):
                try:
                    values[i] = float(row[col])
                except ValueError:
                    raise DataError(
                        f"{self.path}:{self.lines[i]}: non-numeric {self.label(col)} value {row[col]!r}"
                    ) from None
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            i = int(bad[0])
            raise DataError(f"{self.path}:{self.lines[i]}: non-finite {self.label(col)} value {self.rows[i][col]!r}")
        return values


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _is_header(fields: list[str], header: bool | None) -> bool:
    return header if header is not None else not any(_is_number(f) for f in fields)


def _default_sep(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if ".csv" in suffixes:
        return ","
    if ".tsv" in suffixes:
        return "\t"
    return None


class EdgeListSource(GraphSource):
    """Timestamped edges in a CSV / TSV / whitespace text file (gzip allowed), bucketed into snapshots.

    One row per edge event. Columns are chosen by 0-based position or, with a header line, by name. Rows whose
    first character is ``#`` or ``%`` and blank lines are skipped; a first line without any numeric field is a
    header (or say so with ``header``). Node ids are integers parsed exactly (never through a float).

    **Snapshots.** Step ``s = floor((time - earliest time) / step_size)`` (or ``num_steps`` equal steps); several
    events of one pair in a step add their weights. The data module's ``window`` is the edge-life window.

    **Node files** (optional), columns ``node, time, value...`` (same separator rules):

    - ``node_features``: a node's feature vector holds from the step of its row until the node's next row (last
      observation carried forward; zeros before the first row). One row per node at the earliest time gives static
      features.
    - ``node_targets``: one value per node and step (rows of one node in one step are added; zero where none):
      the node-regression target ``y``.

    **Reading** (the edge file is never held whole): one pass validates every row and keeps only the node ids, the
    time range and whether the rows are sorted by time; :meth:`edge_counts` keeps each chunk's distinct
    ``(pair, step)`` keys; :meth:`load` keeps only the rows of the requested snapshots and, on a file sorted by time,
    stops reading past the last of them. Chunks are :attr:`chunk_rows` rows.

    Args:
        path: the edge file.
        src: source-node column.
        dst: target-node column.
        time: timestamp column (any real unit).
        weight: optional edge-weight column (default: every event weighs 1).
        label: optional signed-label column (edge-sign task: the sign of the value).
        sep: column separator; default ``,`` for ``.csv``, tab for ``.tsv``, else any whitespace.
        header: the first row is a header (default: detected).
        num_steps: number of equal-width time steps (give this or ``step_size``).
        step_size: step width in the time unit.
        remap_ids: map the node ids that occur (edges and node files) to ``0..N-1`` in increasing order; else ids
            must lie in ``[0, num_nodes)``.
        num_nodes: ``N`` without remapping (default: largest id + 1).
        node_features: optional node-feature file.
        node_targets: optional node-target file.
    """

    reads_blocks = True
    #: Data rows parsed at a time.
    chunk_rows: int = CHUNK_ROWS

    def __init__(
        self,
        path: str,
        src: int | str = 0,
        dst: int | str = 1,
        time: int | str = 2,
        weight: int | str | None = None,
        label: int | str | None = None,
        sep: str | None = None,
        header: bool | None = None,
        num_steps: int | None = None,
        step_size: float | None = None,
        remap_ids: bool = True,
        num_nodes: int | None = None,
        node_features: str | None = None,
        node_targets: str | None = None,
    ) -> None:
        if (num_steps is None) == (step_size is None):
            raise ConfigError(f"data.source ({path}): give exactly one of num_steps or step_size")
        self.path = Path(path)
        self.columns = {"src": src, "dst": dst, "time": time, "weight": weight, "label": label}
        self.sep, self.header = sep, header
        self.num_steps, self.step_size = num_steps, step_size
        self.remap_ids, self.num_nodes = remap_ids, num_nodes
        self.node_features = Path(node_features) if node_features else None
        self.node_targets = Path(node_targets) if node_targets else None
        self._parsed: dict | None = None
        self.rows_read = 0

    @property
    def name(self) -> str:
        return str(self.path)

    def _chunks(self, path: Path) -> Iterator[_Table]:
        return _iter_tables(
            path, self.sep if self.sep is not None else _default_sep(path), self.header, self.chunk_rows
        )

    def _table(self, path: Path) -> _Table:
        return _Table.read(path, self.sep if self.sep is not None else _default_sep(path), self.header)

    def _fields(self, chunk: _Table) -> dict[str, np.ndarray]:
        """Validated columns of one chunk of the edge file: raw ids, times, weights, labels."""
        cols = {k: chunk.column(v, k) for k, v in self.columns.items() if v is not None}
        out = {"src": chunk.ints(cols["src"]), "dst": chunk.ints(cols["dst"]), "time": chunk.floats(cols["time"])}
        out["weight"] = chunk.floats(cols["weight"]) if "weight" in cols else np.ones(len(chunk.rows))
        if "label" in cols:
            out["label"] = np.sign(chunk.floats(cols["label"])).astype(np.int64)
        if not self.remap_ids:
            limit = self.num_nodes if self.num_nodes is not None else EXACT_FLOAT_INT
            for name in ("src", "dst"):
                values = out[name]
                bad = np.flatnonzero((values < 0) | (values >= limit))
                if bad.size:
                    i = int(bad[0])
                    raise DataError(f"{self.path}:{chunk.lines[i]}: {name} node id {values[i]} outside [0, {limit})")
        return out

    def _parse(self) -> dict:
        """One pass over the edge file, chunk by chunk, keeping only its summary: the node ids (remapping), the time
        range and whether rows are sorted by time (every row is validated here). Node files are read whole."""
        if self._parsed is not None:
            return self._parsed
        ids = np.zeros(0, dtype=np.int64)
        t_min, t_max, last, time_sorted, rows = np.inf, -np.inf, -np.inf, True, 0
        for chunk in self._chunks(self.path):
            f = self._fields(chunk)
            ids = np.union1d(ids, np.concatenate([f["src"], f["dst"]]))
            times = f["time"]
            time_sorted &= bool(times[0] >= last) and bool((times[1:] >= times[:-1]).all())
            t_min, t_max, last = min(t_min, float(times.min())), max(t_max, float(times.max())), float(times[-1])
            rows += times.size
        node_rows = {k: self._table(p) for k, p in (("x", self.node_features), ("y", self.node_targets)) if p}
        node_ids = {k: t.ints(0) for k, t in node_rows.items()}
        ids, n = self._id_map(np.union1d(ids, np.concatenate([np.zeros(0, np.int64), *node_ids.values()])))
        if self.num_steps is not None:
            if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 1:
                raise ConfigError(f"num_steps must be an int >= 1, got {self.num_steps!r}")
            width, count = (t_max - t_min) / self.num_steps, self.num_steps
        else:
            if not self.step_size > 0:
                raise ConfigError(f"step_size must be > 0, got {self.step_size!r}")
            width = float(self.step_size)
            count = int(_steps(np.array([t_max]), t_min, width, None)[0]) + 1
        self._parsed = {
            "ids": ids,
            "count": count,
            "num_nodes": n,
            "t_min": t_min,
            "width": width,
            "rows": rows,
            "time_sorted": time_sorted,
            "node_ids": ids.raw if self.remap_ids else None,
            "starts": t_min + width * torch.arange(count, dtype=torch.float64),
        }
        for key, tab in node_rows.items():
            self._parsed[key] = self._node_values(tab, ids(node_ids[key]), t_min, width, count, n, carry=key == "x")
        return self._parsed

    def _id_map(self, everything: np.ndarray):
        """A callable mapping raw ids to ``0..N-1`` (``.raw`` = the raw id of each node) and ``N``."""
        if self.remap_ids:

            def remap(values: np.ndarray) -> Tensor:
                return torch.from_numpy(np.searchsorted(everything, values).astype(np.int64))

            remap.raw = torch.from_numpy(everything)  # type: ignore[attr-defined]
            return remap, int(everything.size)
        n = self.num_nodes if self.num_nodes is not None else int(everything.max()) + 1
        return (lambda values: torch.from_numpy(values)), n

    def _node_values(
        self, table: _Table, node: Tensor, t_min: float, width: float, count: int, n: int, carry: bool
    ) -> Tensor:
        """``(T, N, F)`` features (carried forward) or ``(T, N)`` targets (summed per step) from a node file."""
        width_cols = len(table.rows[0])
        if width_cols < 3:
            raise DataError(f"{table.path}: node files need the columns node, time, value... (got {width_cols})")
        if not self.remap_ids:
            bad = torch.nonzero((node < 0) | (node >= n)).flatten()
            if bad.numel():
                i = int(bad[0])
                raise DataError(f"{table.path}:{table.lines[i]}: node id {int(node[i])} outside [0, {n})")
        steps = torch.from_numpy(_steps(table.floats(1), t_min, width, count, clamp_low=True))
        values = torch.from_numpy(np.stack([table.floats(c) for c in range(2, width_cols)], 1).astype(np.float32))
        keep = steps < count
        steps, node, values = steps[keep], node[keep], values[keep]
        if not carry:
            out = torch.zeros(count, n)
            return out.index_put_((steps, node), values[:, 0], accumulate=True)
        out = torch.zeros(count, n, values.shape[1])
        order = torch.argsort(steps, stable=True)  # later rows of a step overwrite earlier ones
        out[steps[order], node[order]] = values[order]
        seen = torch.zeros(count, n, dtype=torch.bool)
        seen[steps, node] = True
        for t in range(1, count):  # last observation carried forward
            out[t] = torch.where(seen[t].unsqueeze(1), out[t], out[t - 1])
            seen[t] |= seen[t - 1]
        return out

    def _rows(self, keep: Collection[int] | None) -> dict[str, Tensor | None]:
        """Second pass: the rows whose step is in ``keep`` (all when ``None``), as tensors of mapped ids and steps.

        Only the time column of the other rows is parsed; on a file sorted by time, reading stops at the first row
        past the last step of ``keep``. :attr:`rows_read` counts the data rows looked at.
        """
        p = self._parse()
        wanted = None if keep is None else np.array(sorted(keep), dtype=np.int64)
        parts: dict[str, list[np.ndarray]] = {"steps": [], "src": [], "dst": [], "weight": [], "label": []}
        self.rows_read = 0
        col_time = None
        for chunk in self._chunks(self.path):
            col_time = chunk.column(self.columns["time"], "time") if col_time is None else col_time
            steps = _steps(chunk.floats(col_time), p["t_min"], p["width"], p["count"] if self.num_steps else None)
            self.rows_read += steps.size
            mask = np.ones(steps.size, dtype=bool) if wanted is None else np.isin(steps, wanted)
            past = wanted is not None and p["time_sorted"] and (wanted.size == 0 or steps[-1] > wanted[-1])
            if mask.any():
                f = self._fields(chunk.subset(mask))
                parts["steps"].append(steps[mask])
                for key in ("src", "dst", "weight", "label"):
                    if key in f:
                        parts[key].append(f[key])
            if past:
                break
        ids = p["ids"]

        def cat(key: str, dtype) -> np.ndarray:
            return np.concatenate(parts[key]) if parts[key] else np.zeros(0, dtype=dtype)

        return {
            "steps": torch.from_numpy(cat("steps", np.int64)),
            "src": ids(cat("src", np.int64)),
            "dst": ids(cat("dst", np.int64)),
            "weight": torch.from_numpy(cat("weight", np.float64).astype(np.float32)),
            "label": torch.from_numpy(cat("label", np.int64)) if self.columns["label"] is not None else None,
        }

    def edge_counts(self, window: int) -> list[int]:
        """Distinct pairs of every windowed snapshot, from one pass keeping only each chunk's distinct
        ``(pair, step)`` keys (not the graph)."""
        p = self._parse()
        n, count = p["num_nodes"], p["count"]
        pairs: list[np.ndarray] = []  # key * count + step: sorted by key, then step
        cols = None
        for chunk in self._chunks(self.path):
            cols = cols or {k: chunk.column(self.columns[k], k) for k in ("src", "dst", "time")}
            steps = _steps(chunk.floats(cols["time"]), p["t_min"], p["width"], p["count"] if self.num_steps else None)
            key = p["ids"](chunk.ints(cols["src"])).numpy() * n + p["ids"](chunk.ints(cols["dst"])).numpy()
            pairs.append(np.unique(key * count + steps))
        merged = np.unique(np.concatenate(pairs))
        return _window_counts(merged // count, merged % count, count, window)

    def load(self, snapshots: Collection[int] | None = None) -> DynamicGraph:
        p = self._parse()
        r = self._rows(snapshots)
        edge_indices, edge_weights, edge_labels = _group_snapshots(
            r["steps"], r["src"], r["dst"], r["weight"], r["label"], p["count"], p["num_nodes"], 1
        )
        return DynamicGraph(
            num_nodes=p["num_nodes"],
            edge_indices=edge_indices,
            edge_weights=edge_weights,
            edge_labels=edge_labels,
            x=p.get("x"),
            y=p.get("y"),
            node_ids=p["node_ids"],
            snapshot_times=p["starts"],
            name=self.name,
        ).validate()


def _window_counts(key: np.ndarray, step: np.ndarray, count: int, window: int) -> list[int]:
    """Edges of every snapshot ``t`` (the distinct keys with a step in ``t-w+1 .. t``) from distinct ``(key, step)``
    pairs sorted by key then step: each covers ``[step, step + w)``, minus the part its key's previous pair covers."""
    start = step.copy()
    same = np.zeros(key.size, dtype=bool)
    same[1:] = key[1:] == key[:-1]
    start[1:] = np.where(same[1:], np.maximum(step[1:], step[:-1] + window), step[1:])
    stop = np.minimum(step + window, count)
    live = start < stop
    delta = np.bincount(start[live], minlength=count + 1) - np.bincount(stop[live], minlength=count + 1)
    return np.cumsum(delta)[:count].astype(int).tolist()


def _steps(times: np.ndarray, t_min: float, width: float, count: int | None, clamp_low: bool = False) -> np.ndarray:
    """``floor((t - t_min) / width)`` (the last of ``count`` steps closed on the right; all 0 for a zero width)."""
    if width == 0.0:
        steps = np.zeros(times.shape, dtype=np.int64)
    else:
        steps = np.floor((times - t_min) / width).astype(np.int64)
    if count is not None and not clamp_low:
        steps = np.minimum(steps, count - 1)
    return np.maximum(steps, 0) if clamp_low else steps


# ---------------------------------------------------------------------------------------------- PGT JSON


class PGTJsonSource(GraphSource):
    """A JSON file in one of the layouts PyTorch Geometric Temporal publishes its datasets in.

    - **Per-snapshot dicts** (twitter-tennis): keys ``"0"`` .. ``"T-1"``, each ``{"edges": [[u, v], ...],
      "weights": [...], "X": [[...] per node], "y": [... per node]}``; ``time_periods`` optional, ``node_ids``
      optional (``N`` = its length, else the largest id + 1).
    - **edge_mapping** (England COVID, traffic style): ``{"edge_mapping": {"edge_index": {"0": [[u, v], ...], ...},
      "edge_weight": {"0": [...], ...}}, "y": [[... per node] per step]}``; ``time_periods`` optional.

    ``X``, ``weights``/``edge_weight`` and ``y`` are optional. Where the file has no ``X``, ``lags > 0`` uses the
    targets of the last ``lags`` steps ``y[t-lags+1 .. t]`` as node features (zeros before step 0), as
    PyG-Temporal's loaders do.

    **By snapshot.** The file text is read, and its top-level object (and every step's object, and
    ``edge_mapping``'s two objects) walked member by member with :meth:`json.JSONDecoder.raw_decode`: each member is
    parsed and dropped at once, keeping only where its value lies in the text. A snapshot's edges are parsed again,
    into tensors, only when the snapshot is requested (``X`` and ``y`` always: the data module keeps them whole), so
    the peak holds the text plus one value's Python objects plus the tensors of the requested snapshots (a
    partitioned rank: its block), never every snapshot's lists. :meth:`edge_counts` keeps only each snapshot's
    distinct edge keys. The text is released after :meth:`load`.

    Args:
        path: the JSON file (gzip allowed).
        lags: lagged targets used as features when the file has no ``X`` (0: none).
    """

    reads_blocks = True

    def __init__(self, path: str, lags: int = 0) -> None:
        if isinstance(lags, bool) or not isinstance(lags, int) or lags < 0:
            raise ConfigError(f"data.source.lags must be an int >= 0, got {lags!r}")
        self.path, self.lags = Path(path), lags
        self._doc: dict | None = None

    @property
    def name(self) -> str:
        return str(self.path)

    def _err(self, what: str) -> DataError:
        return DataError(f"{self.path}: {what}")

    def _read(self) -> dict:
        """The text and where every snapshot's values lie in it (see the class docstring); cached until ``load``."""
        from lit_efficiency.dyn_gnn.datasets import _read_text

        if self._doc is not None:
            return self._doc
        if not self.path.is_file():
            raise self._err("file not found")
        text = _read_text(self.path)
        if not text[_skip_ws(text, 0) :].startswith("{"):
            raise self._err("expected a JSON object")
        try:
            top, end = _object_spans(text, 0, {"edge_mapping": {"edge_index": {}, "edge_weight": {}}, _STEP: {}})
            end = _skip_ws(text, end)
            if end != len(text):
                raise json.JSONDecodeError("Extra data", text, end)
        except json.JSONDecodeError as err:
            raise DataError(f"{self.path}:{err.lineno}: invalid JSON ({err.msg})") from None
        if "edge_mapping" in top:
            mapping = top["edge_mapping"]
            if not isinstance(mapping, dict) or not isinstance(mapping.get("edge_index"), dict):
                raise self._err("'edge_mapping' must hold an 'edge_index' object keyed by step")
            weights = mapping.get("edge_weight")
            weights = weights if isinstance(weights, dict) else (_value(text, weights) or {})
            if not isinstance(weights, dict):
                raise self._err("'edge_mapping' 'edge_weight' must be an object keyed by step")
            snaps = {k: {"edges": v, "weights": weights.get(k)} for k, v in mapping["edge_index"].items()}
            y_all = _value(text, top.get("y"))
        else:
            snaps = {k: v for k, v in top.items() if k.isdigit()}
            y_all = None
        count = _value(text, top["time_periods"]) if "time_periods" in top else len(snaps)
        if not isinstance(count, int) or count < 1:
            raise self._err(f"'time_periods' must be a positive int, got {count!r}")
        for t in range(count):
            span = snaps.get(str(t))
            if not isinstance(span, dict):
                raise self._err(f"snapshot '{t}' missing (time_periods={count})")
        node_ids = _value(text, top.get("node_ids"))
        self._doc = {"text": text, "snaps": snaps, "count": count, "node_ids": node_ids, "y_all": y_all}
        return self._doc

    def _raw(self, t: int, key: str) -> Any:
        """Snapshot ``t``'s JSON value ``key`` (edges, weights, X, y), parsed from the text, or ``None``."""
        doc = self._read()
        if doc["y_all"] is not None and key == "y":
            return doc["y_all"][t] if isinstance(doc["y_all"], list) and t < len(doc["y_all"]) else None
        return _value(doc["text"], doc["snaps"][str(t)].get(key))

    def _tensor(self, t: int, key: str, dtype: torch.dtype) -> Tensor | None:
        value = self._raw(t, key)
        if value is None:
            return None
        try:
            out = torch.tensor(value, dtype=dtype)
        except (TypeError, ValueError, RuntimeError):
            raise self._err(f"snapshot '{t}' {key}: non-numeric or ragged values") from None
        if out.is_floating_point():
            bad = torch.nonzero(~torch.isfinite(out))
            if bad.numel():
                where = ",".join(str(int(i)) for i in bad[0])
                raise self._err(f"snapshot '{t}' {key}[{where}]: non-finite value {out[tuple(bad[0])].item()}")
        return out

    def _edges(self, t: int) -> tuple[Tensor, Tensor | None]:
        edges = self._tensor(t, "edges", torch.float64)
        if edges is None:
            raise self._err(f"snapshot '{t}' has no edges")
        edges = edges.reshape(0, 2) if edges.numel() == 0 else edges
        if edges.dim() != 2 or edges.shape[1] != 2:
            raise self._err(f"snapshot '{t}' edges: expected a list of [u, v] pairs, got shape {tuple(edges.shape)}")
        bad = torch.nonzero((edges != edges.floor()).any(1) | (edges.abs() >= EXACT_FLOAT_INT).any(1)).flatten()
        if bad.numel():
            raise self._err(f"snapshot '{t}' edges[{int(bad[0])}]: node ids must be exact integers below 2**53")
        weights = self._tensor(t, "weights", torch.float32)
        if weights is not None and weights.numel() != edges.shape[0]:
            raise self._err(f"snapshot '{t}': {edges.shape[0]} edges but {weights.numel()} weights")
        return edges.long().T.contiguous(), weights

    def _num_nodes(self) -> int:
        doc = self._read()
        if doc["node_ids"] is not None:
            return len(doc["node_ids"])
        if "num_nodes" not in doc:
            n = 0
            for t in range(doc["count"]):
                ei, _ = self._edges(t)
                rows = (len(self._raw(t, key) or []) for key in ("y", "X"))
                n = max(n, int(ei.max()) + 1 if ei.numel() else 0, *rows)
            doc["num_nodes"] = n
        return doc["num_nodes"]

    def _snapshot(self, t: int, n: int) -> tuple[Tensor, Tensor | None]:
        ei, w = self._edges(t)
        if ei.numel():
            lo, hi = int(ei.min()), int(ei.max())
            if lo < 0 or hi >= n:
                i = int(torch.nonzero((ei < 0).any(0) | (ei >= n).any(0))[0])
                raise self._err(f"snapshot '{t}' edges[{i}]: node id pair {tuple(ei[:, i].tolist())} outside [0, {n})")
        merged = coalesce_edges(ei, n, w)
        return merged.edge_index, merged.edge_weight

    def _node_matrix(self, key: str, n: int) -> Tensor | None:
        count = self._read()["count"]
        rows = [self._tensor(t, key, torch.float32) for t in range(count)]
        if all(r is None for r in rows):
            return None
        for t, r in enumerate(rows):
            if r is None or r.shape[0] != n:
                got = "nothing" if r is None else tuple(r.shape)
                raise self._err(f"snapshot '{t}' {key}: expected {n} rows (one per node), got {got}")
        return torch.stack(rows)

    def edge_counts(self, window: int) -> list[int]:
        """Edges of every windowed snapshot from each snapshot's distinct keys, one snapshot parsed at a time (the
        keys, 8 bytes per edge, are kept until :meth:`load` for the next window asked)."""
        doc, n = self._read(), self._num_nodes()
        count = doc["count"]
        if "pairs" not in doc:
            pairs = []
            for t in range(count):
                ei, _ = self._snapshot(t, n)
                pairs.append(edge_key(ei[0], ei[1], n).numpy() * count + t)
            doc["pairs"] = np.sort(np.concatenate(pairs))
        merged = doc["pairs"]
        return _window_counts(merged // count, merged % count, count, window)

    def load(self, snapshots: Collection[int] | None = None) -> DynamicGraph:
        count = self._read()["count"]
        n = self._num_nodes()
        keep = None if snapshots is None else set(snapshots)
        edge_indices, weights = [], []
        for t in range(count):
            if keep is None or t in keep:
                ei, w = self._snapshot(t, n)
            else:
                ei, w = torch.zeros((2, 0), dtype=torch.long), torch.zeros(0)
            edge_indices.append(ei)
            weights.append(w)
        if any(w is None for w in weights):
            weights = [torch.ones(ei.shape[1]) for ei in edge_indices]
        y = self._node_matrix("y", n)
        x = self._node_matrix("X", n)
        if x is not None and x.dim() == 2:
            x = x.unsqueeze(-1)
        if x is None and self.lags and y is not None:
            padded = torch.cat([torch.zeros(self.lags - 1, n), y.reshape(count, n)])
            x = torch.stack([padded[t : t + self.lags].T for t in range(count)])
        self._doc = None  # the data module keeps what it needs: do not hold the text (and its index) too
        return DynamicGraph(
            num_nodes=n, edge_indices=edge_indices, edge_weights=weights, x=x, y=y, name=self.name
        ).validate()


_DECODER = json.JSONDecoder()
#: In ``_object_spans``' ``nested``: what to walk inside every member whose key is a step number.
_STEP = "<step>"
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _value(text: str, span: tuple[int, int] | None) -> Any:
    """The JSON value at ``span`` of ``text`` (``None`` for no span)."""
    return None if span is None else _DECODER.raw_decode(text, span[0])[0]


def _skip_ws(text: str, pos: int) -> int:
    return _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]


def _object_spans(text: str, pos: int, nested: dict) -> tuple[dict[str, Any], int]:
    """Where the members of the JSON object at ``text[pos]`` lie: ``{key: (start, end)}`` and the end of the object.

    Each member is parsed with :meth:`json.JSONDecoder.raw_decode` (which validates it) and dropped at once. A member
    named in ``nested`` (a step number: if ``nested`` has :data:`_STEP`) whose value is an object is walked the same
    way instead (its entry is that dict; ``nested`` maps each such key to the keys nested inside it).

    Raises:
        json.JSONDecodeError: The text is not a valid object there.
    """
    pos = _skip_ws(text, pos + 1)
    out: dict[str, Any] = {}
    if text.startswith("}", pos):
        return out, pos + 1
    while True:
        key, pos = _DECODER.raw_decode(text, pos)
        if not isinstance(key, str):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, pos)
        pos = _skip_ws(text, pos)
        if not text.startswith(":", pos):
            raise json.JSONDecodeError("Expecting ':' delimiter", text, pos)
        pos = _skip_ws(text, pos + 1)
        inner = nested.get(key, nested.get(_STEP) if key.isdigit() else None)
        if inner is not None and text.startswith("{", pos):
            out[key], pos = _object_spans(text, pos, inner)
        else:
            end = _DECODER.raw_decode(text, pos)[1]
            out[key], pos = (pos, end), end
        pos = _skip_ws(text, pos)
        if text.startswith(",", pos):
            pos = _skip_ws(text, pos + 1)
        elif text.startswith("}", pos):
            return out, pos + 1
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)


# ---------------------------------------------------------------------------------------------- PyG


class PyGSource(GraphSource):
    """A PyG dynamic graph saved with ``torch.save`` in weights-only form (loaded with ``weights_only=True``).

    - a list of snapshots, each ``Data.to_dict()`` (``edge_index``, optional ``edge_weight``, ``edge_label``,
      ``x``, ``y``, ``num_nodes``): ``torch.save([d.to_dict() for d in snapshots], path)``;
    - a ``TemporalData.to_dict()`` (``src``, ``dst``, ``t``, optional ``msg``, ``y``), bucketed into snapshots with
      ``num_steps`` or ``step_size`` (weights = event counts; ``label_attr`` names a signed per-event label).

    Args:
        path: the ``.pt`` file.
        num_steps: ``TemporalData``: number of equal-width steps.
        step_size: ``TemporalData``: step width in the unit of ``t``.
        label_attr: ``TemporalData``: per-event attribute used as the signed edge label.
    """

    def __init__(
        self, path: str, num_steps: int | None = None, step_size: float | None = None, label_attr: str | None = None
    ) -> None:
        self.path, self.num_steps, self.step_size, self.label_attr = Path(path), num_steps, step_size, label_attr

    @property
    def name(self) -> str:
        return str(self.path)

    def _full(self) -> DynamicGraph:
        from torch_geometric.data import Data, TemporalData

        if not self.path.is_file():
            raise DataError(f"{self.path}: file not found")
        try:
            obj = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
            reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise DataError(
                f"{self.path}: not a weights-only torch file of Data/TemporalData dicts (save d.to_dict()): {reason}"
            ) from None
        if isinstance(obj, dict) and {"src", "dst", "t"} <= obj.keys():
            for key in ("src", "dst", "t"):
                _check_finite(self.path, key, obj[key])
            return DynamicGraph.from_temporal_data(
                TemporalData(**obj),
                num_steps=self.num_steps,
                step_size=self.step_size,
                label_attr=self.label_attr,
                name=self.name,
            )
        if not isinstance(obj, (list, tuple)) or not obj or not all(isinstance(d, dict) for d in obj):
            raise DataError(f"{self.path}: expected a non-empty list of Data.to_dict() or a TemporalData.to_dict()")
        for t, d in enumerate(obj):
            if "edge_index" not in d:
                raise DataError(f"{self.path}: snapshot {t} has no edge_index")
            for key, value in d.items():
                if isinstance(value, Tensor):
                    _check_finite(self.path, f"snapshot {t} {key}", value)
        return DynamicGraph.from_pyg_list([Data(**d) for d in obj], name=self.name)

    def load(self, snapshots: Collection[int] | None = None) -> DynamicGraph:
        return blank_snapshots(self._full(), snapshots)


def _check_finite(path: Path, what: str, value: Tensor) -> None:
    if value.is_floating_point():
        bad = torch.nonzero(~torch.isfinite(value))
        if bad.numel():
            where = ",".join(str(int(i)) for i in bad[0])
            raise DataError(f"{path}: {what}[{where}] is non-finite ({value[tuple(bad[0])].item()})")
