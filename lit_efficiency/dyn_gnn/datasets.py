"""Loaders for the real dynamic-graph datasets: Bitcoin-OTC/Alpha, UCI messages, chess, twitter-tennis.

Where the data comes from, in order:

1. a local copy ``resolve_data_root(data_dir) / "graphs" / <name> / <file>`` (``data_dir`` argument, then
   ``$LIT_EFFICIENCY_DATA``, then ``../shared/data`` beside the checkout; see :mod:`lit_efficiency.core.paths`);
2. a previous download in the cache ``cache_dir / <name> /`` (default ``$LIT_EFFICIENCY_CACHE/graphs`` or
   ``~/.cache/lit_efficiency/graphs``);
3. the real source (SNAP, KONECT, the PyTorch Geometric Temporal repository on GitHub), downloaded into that cache
   over https only when 1 and 2 have nothing and ``download=True``; the payload must have the sha256 published in
   :data:`DATASETS` (checked again on each use of the cached file), archives and gzip data are unpacked within a
   size cap (:mod:`lit_efficiency.core.downloads`). The digests were taken from the copies in ``shared/data``,
   which match SNAP's and KONECT's published counts: neither SNAP, KONECT nor a third party we could find publishes
   a sha256 of these files (searched for chess: none), so these digests pin the files as first fetched rather than
   cross-check them against an independent publication; a source that changed its file is refused, never used.

Parsing (all rows are checked; errors are one line naming ``file:line``): rows with the wrong number of
columns, non-numeric or non-finite fields, non-integer or negative node ids, and node ids ``>= num_nodes``
where ``N`` is given (``remap_ids=False`` with ``num_nodes``; the JSON of twitter-tennis fixes ``N = 1000``).
Blank lines and lines starting with ``%`` or ``#`` are skipped; a first line with no numeric field is taken as
a header and skipped. Gzip files are recognised by their magic bytes, whatever their name.

Node ids: SNAP/KONECT ids are not dense (OTC has 5,881 nodes with ids up to 6,005), so by default the ids
that occur are remapped to ``0..N-1`` in increasing order of the raw id (``DynamicGraph.node_ids[i]`` is the
raw id of node ``i``). With ``remap_ids=False`` raw ids are kept (``N = num_nodes`` or ``max id + 1``).

Default time steps follow EvolveGCN's preprocessing (IBM/EvolveGCN ``utils.aggregate_by_time``:
``step = (t - t_min) // aggr_time`` with ``aggr_time = 1,200,000 s`` for Bitcoin and ``190,080 s`` for UCI):

============== ================ ============ =======================================================
dataset        default step     snapshots    note
============== ================ ============ =======================================================
bitcoin_otc    1,200,000 s      138          EvolveGCN paper: 138
bitcoin_alpha  1,200,000 s      137          paper: 136 (= the largest 0-based step index here)
uci_messages   190,080 s        89           paper: 88 (= the largest 0-based step index here)
chess          2,628,000 s      100          one month (365/12 days); timestamps rounded to seconds
twitter_tennis 1 hour           120          the JSON's own hourly snapshots
============== ================ ============ =======================================================

Edge weights are event counts (each raw row weighs 1; twitter-tennis uses the JSON's weights). Edge labels
are the sign of the Bitcoin rating (-10..10, never 0) and the chess outcome (+1 white wins, 0 draw, -1 black
wins); merged duplicates get the sign of the summed labels (majority vote, as EvolveGCN's edge
classification). Twitter-tennis has ``x`` = the JSON ``X`` (per hour, 1000 x 2: raw degree, transitivity)
and ``y`` = mentions received (float, for node regression). Pure PyTorch; no lightning.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from lit_efficiency.core.downloads import fetch_verified, gunzip_bounded, verify_file
from lit_efficiency.core.errors import ConfigError, DataError
from lit_efficiency.core.paths import ENV_DATA, resolve_data_root
from lit_efficiency.dyn_gnn.graph import DynamicGraph, bucket_edges, coalesce_edges

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "EdgeEvents",
    "ENV_CACHE",
    "dataset_file",
    "load_dataset",
    "load_twitter_tennis",
    "read_edge_events",
]

#: Env var naming the download cache root (datasets go to ``$LIT_EFFICIENCY_CACHE/graphs/<name>/``).
ENV_CACHE = "LIT_EFFICIENCY_CACHE"

_TENNIS_URL = (
    "https://raw.githubusercontent.com/benedekrozemberczki/pytorch_geometric_temporal/"
    "adefe44265ad8faf239fd6cf3b59b95ca3ee60aa/dataset/twitter_tennis_rg17.json"
)


@dataclass(frozen=True)
class DatasetSpec:
    """How to find, fetch and parse one dataset."""

    name: str
    """Dataset name (also the folder under ``graphs/``)."""
    filename: str
    """File name of the local copy in ``shared/data/graphs/<name>/``."""
    url: str
    """The real source."""
    download_name: str
    """File name the download is stored under in the cache (what the URL serves)."""
    columns: tuple[str, ...]
    """Column names, for error messages (empty for JSON)."""
    sep: str | None
    """Column separator; ``None`` = any whitespace."""
    default_step_size: float
    """Step width in the file's time unit (seconds; hours for twitter-tennis)."""
    has_label: bool
    """Column 2 is a signed rating/outcome used as the edge label."""
    round_time: bool = False
    """Round timestamps to whole seconds before bucketing (chess: month stamps like ``885635999.999997``)."""
    sha256: str = ""
    """Published sha256 of the payload (gzip data unpacked), checked on every download and cached copy."""
    archive_member: str | None = None
    """Member to extract when the download is a ``.tar.bz2`` archive (KONECT)."""


DATASETS: dict[str, DatasetSpec] = {
    "bitcoin_otc": DatasetSpec(
        name="bitcoin_otc",
        filename="soc-sign-bitcoinotc.csv.gz",
        url="https://snap.stanford.edu/data/soc-sign-bitcoinotc.csv.gz",
        download_name="soc-sign-bitcoinotc.csv.gz",
        sha256="76bd9d8f1d3ff9a1813d9fc8e6902a0ee4d0a2f8c1003842dbc9ec79149ab60c",
        columns=("SOURCE", "TARGET", "RATING", "TIME"),
        sep=",",
        default_step_size=1_200_000.0,
        has_label=True,
    ),
    "bitcoin_alpha": DatasetSpec(
        name="bitcoin_alpha",
        filename="soc-sign-bitcoinalpha.csv",
        url="https://snap.stanford.edu/data/soc-sign-bitcoinalpha.csv.gz",
        download_name="soc-sign-bitcoinalpha.csv.gz",
        sha256="1b2a970f327d0ceba0c57bd5919670257cbe4cc0704e2ddac09abc4b08e2ca4d",
        columns=("SOURCE", "TARGET", "RATING", "TIME"),
        sep=",",
        default_step_size=1_200_000.0,
        has_label=True,
    ),
    "uci_messages": DatasetSpec(
        name="uci_messages",
        filename="CollegeMsg.txt",
        url="https://snap.stanford.edu/data/CollegeMsg.txt.gz",
        download_name="CollegeMsg.txt.gz",
        sha256="e00ba2415373dee52c00616065bcceaa4750e78de60d1855c76470600f10740f",
        columns=("SRC", "DST", "UNIXTS"),
        sep=None,
        default_step_size=190_080.0,
        has_label=False,
    ),
    "chess": DatasetSpec(
        name="chess",
        filename="out.chess.csv",
        url="https://konect.cc/files/download.tsv.chess.tar.bz2",
        download_name="out.chess.csv",
        # Of the shared copy's out.chess: KONECT publishes no checksum and none was found elsewhere (module docstring).
        sha256="3548a96b424286dc067d94fbae261f511d32eb436e50318e0f611be6f8450179",
        columns=("FROM", "TO", "OUTCOME", "TIME"),
        sep=None,
        default_step_size=2_628_000.0,
        has_label=True,
        round_time=True,
        archive_member="chess/out.chess",
    ),
    "twitter_tennis": DatasetSpec(
        name="twitter_tennis",
        filename="twitter_tennis_rg17.json",
        url=_TENNIS_URL,
        download_name="twitter_tennis_rg17.json",
        sha256="1f9c3501a96881bbc26c899483c3fce73f36081f2df29d91fcd33c6dc4edf9c8",
        columns=(),
        sep=None,
        default_step_size=1.0,
        has_label=False,
    ),
}


class EdgeEvents(NamedTuple):
    """The raw timestamped edges of a dataset file, one entry per row, node ids already remapped if asked."""

    src: Tensor
    """(E,) long source node ids."""
    dst: Tensor
    """(E,) long target node ids."""
    t: Tensor
    """(E,) float64 timestamps."""
    label: Tensor | None
    """(E,) long sign of the rating/outcome, or ``None``."""
    num_nodes: int
    """``N``."""
    node_ids: Tensor | None
    """(N,) raw id of each node when remapped, else ``None``."""
    path: Path
    """The file read."""


# ---------------------------------------------------------------------------------------------- files


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return DATASETS[name]


def _default_cache_dir() -> Path:
    env = os.environ.get(ENV_CACHE)
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "lit_efficiency"
    return base / "graphs"


def _download(spec: DatasetSpec, target: Path) -> None:
    """Fetch ``spec.url`` into ``target``: https only, checksum verified, atomic, bounded (:mod:`core.downloads`)."""
    try:
        fetch_verified(spec.url, target, spec.sha256, member=spec.archive_member)
    except DataError as err:
        raise DataError(
            f"could not download {spec.name}: {err}; put {spec.filename} in <data dir>/graphs/{spec.name}/ and pass "
            f"data_dir or set ${ENV_DATA}"
        ) from None


def dataset_file(
    name: str,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> Path:
    """Return the file of dataset ``name``: local copy, else cached download, else download it now.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: data root (holding ``graphs/<name>/``); default :func:`resolve_data_root`.
        cache_dir: download cache root (holding ``<name>/``); default ``$LIT_EFFICIENCY_CACHE/graphs`` or
            ``~/.cache/lit_efficiency/graphs``.
        download: fetch from the real source when there is no local or cached file.

    Raises:
        ConfigError: unknown name.
        DataError: no file and ``download=False``, or the download failed.
    """
    spec = _spec(name)
    root = resolve_data_root(data_dir)
    local = root / "graphs" / name / spec.filename if root is not None else None
    if local is not None and local.is_file():
        return local
    cache = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    cached = cache / name / spec.download_name
    if cached.is_file():
        return verify_file(cached, spec.sha256)
    if not download:
        where = local if local is not None else f"<data dir>/graphs/{name}/{spec.filename}"
        raise DataError(f"{name} not found: {where} (set ${ENV_DATA}, pass data_dir, or allow download)")
    _download(spec, cached)
    return cached


def _read_text(path: Path) -> str:
    raw = gunzip_bounded(path.read_bytes(), str(path))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err


# ---------------------------------------------------------------------------------------------- parsing


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _parse_table(path: Path, text: str, spec: DatasetSpec) -> tuple[np.ndarray, list[int]]:
    """Parse a delimited numeric table into an (E, C) float64 array and the 1-based line number of each row."""
    ncols = len(spec.columns)
    rows: list[list[str]] = []
    line_numbers: list[int] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped[0] in "%#":
            continue
        fields = stripped.split(spec.sep) if spec.sep is not None else stripped.split()
        if not rows and not any(_is_number(f) for f in fields):
            continue  # a header line
        rows.append(fields)
        line_numbers.append(lineno)
    if not rows:
        raise DataError(f"{path}: empty file (no edge rows)")
    for fields, lineno in zip(rows, line_numbers, strict=True):
        if len(fields) != ncols:
            raise DataError(
                f"{path}:{lineno}: expected {ncols} columns ({spec.sep or 'whitespace'}-separated "
                f"{' '.join(spec.columns)}), got {len(fields)}"
            )
    try:
        # Fast path: numpy converts the whole table at C speed; only on failure look for the bad line.
        table = np.array(rows, dtype=np.float64)
    except ValueError as err:
        for fields, lineno in zip(rows, line_numbers, strict=True):
            for col, f in enumerate(fields):
                if not _is_number(f):
                    raise DataError(f"{path}:{lineno}: non-numeric {spec.columns[col]} field {f.strip()!r}") from None
        raise DataError(f"{path}: could not parse the numeric table ({err})") from None
    finite = np.isfinite(table)
    if not finite.all():
        i, col = np.argwhere(~finite)[0]
        raise DataError(f"{path}:{line_numbers[i]}: non-finite {spec.columns[col]} value {rows[i][col].strip()!r}")
    return table, line_numbers


def _check_ids(path: Path, ids: np.ndarray, line_numbers: list[int], spec: DatasetSpec, num_nodes: int | None) -> None:
    """Node-id checks on the (E, 2) id columns: integral, non-negative, ``< num_nodes`` when given."""
    bad = np.argwhere(ids != np.floor(ids))
    if len(bad):
        i, col = bad[0]
        raise DataError(f"{path}:{line_numbers[i]}: non-integer {spec.columns[col]} node id {ids[i, col]:g}")
    bad = np.argwhere(np.abs(ids) >= 2**53)
    if len(bad):
        i, col = bad[0]
        raise DataError(
            f"{path}:{line_numbers[i]}: {spec.columns[col]} node id {ids[i, col]:.0f} does not fit exactly in a "
            "float64 (>= 2**53); use lit_efficiency.dyn_gnn.sources.EdgeListSource, which parses ids as integers"
        )
    bad = np.argwhere(ids < 0)
    if len(bad):
        i, col = bad[0]
        raise DataError(f"{path}:{line_numbers[i]}: negative {spec.columns[col]} node id {int(ids[i, col])}")
    if num_nodes is not None:
        bad = np.argwhere(ids >= num_nodes)
        if len(bad):
            i, col = bad[0]
            raise DataError(
                f"{path}:{line_numbers[i]}: {spec.columns[col]} node id {int(ids[i, col])} out of range "
                f"for num_nodes={num_nodes}"
            )


def read_edge_events(
    name: str,
    data_dir: str | os.PathLike | None = None,
    path: str | os.PathLike | None = None,
    remap_ids: bool = True,
    num_nodes: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> EdgeEvents:
    """Read the raw timestamped edge rows of a tabular dataset (all but ``twitter_tennis``).

    Args:
        name: ``bitcoin_otc``, ``bitcoin_alpha``, ``uci_messages`` or ``chess``.
        data_dir: data root; see :func:`dataset_file`.
        path: read this file instead (same format as the dataset's).
        remap_ids: remap the ids that occur to ``0..N-1`` (sorted by raw id); else keep raw ids.
        num_nodes: with ``remap_ids=False``: ``N``, ids must be smaller (default ``max id + 1``). With remapping it
            must be at least the number of distinct ids (extra nodes are isolated).
        cache_dir: download cache root.
        download: allow downloading from the real source.

    Returns:
        :class:`EdgeEvents`, one entry per data row in file order.

    Raises:
        ConfigError: unknown or non-tabular dataset name.
        DataError: one line naming ``file:line`` for a malformed row, or the file for an empty one.
    """
    spec = _spec(name)
    if spec.sep is None and not spec.columns:
        raise ConfigError(f"dataset {name!r} is not a table of edge rows; use load_dataset({name!r})")
    file = Path(path) if path is not None else dataset_file(name, data_dir, cache_dir, download)
    if not file.is_file():
        raise DataError(f"{name} file not found: {file}")
    table, line_numbers = _parse_table(file, _read_text(file), spec)
    ids = table[:, :2]
    _check_ids(file, ids, line_numbers, spec, None if remap_ids else num_nodes)
    src = torch.from_numpy(ids[:, 0].astype(np.int64))
    dst = torch.from_numpy(ids[:, 1].astype(np.int64))
    times = table[:, -1]
    if spec.round_time:
        times = np.round(times)
    t = torch.from_numpy(np.ascontiguousarray(times))
    label = torch.from_numpy(np.sign(table[:, 2]).astype(np.int64)) if spec.has_label else None
    node_ids = None
    if remap_ids:
        node_ids, inverse = torch.unique(torch.cat([src, dst]), return_inverse=True)
        src, dst = inverse[: src.numel()], inverse[src.numel() :]
        n = node_ids.numel()
        if num_nodes is not None and num_nodes < n:
            raise ConfigError(f"num_nodes={num_nodes} is smaller than the {n} distinct node ids in {file}")
        n = num_nodes if num_nodes is not None else n
    else:
        n = num_nodes if num_nodes is not None else int(max(src.max(), dst.max())) + 1
    return EdgeEvents(src=src, dst=dst, t=t, label=label, num_nodes=n, node_ids=node_ids, path=file)


def _json_error(path: Path, what: str) -> DataError:
    return DataError(f"{path}: {what}")


def load_twitter_tennis(
    path: str | os.PathLike,
    window: int = 1,
) -> DynamicGraph:
    """Parse the PyG-Temporal ``twitter_tennis_rg17.json`` (120 hourly snapshots over 1000 nodes).

    Keys ``"0"`` ... ``"<time_periods - 1>"`` each hold ``edges`` ([[u, v], ...]), ``weights``, ``X`` (N x 2: raw
    degree, transitivity) and ``y`` (N mentions received). ``N = len(node_ids)``.

    Args:
        path: the JSON file.
        window: edge-life window ``w >= 1`` (snapshot ``t`` = the hours ``t-w+1 .. t``, weights summed); ``x`` and
            ``y`` stay those of hour ``t``.

    Returns:
        DynamicGraph with ``x`` ``(T, N, 2)`` float32 and ``y`` ``(T, N)`` float32.

    Raises:
        DataError: invalid JSON (naming its line), missing keys, wrong lengths, node ids outside ``[0, N)``.
    """
    path = Path(path)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"window must be an int >= 1, got {window!r}")
    text = _read_text(path)
    if not text.strip():
        raise DataError(f"{path}: empty file")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(doc, dict) or "time_periods" not in doc or "node_ids" not in doc:
        raise _json_error(path, "expected a JSON object with 'time_periods' and 'node_ids'")
    num_steps = doc["time_periods"]
    if not isinstance(num_steps, int) or num_steps < 1:
        raise _json_error(path, f"'time_periods' must be a positive int, got {num_steps!r}")
    n = len(doc["node_ids"])
    src_parts, dst_parts, w_parts, xs, ys = [], [], [], [], []
    for t in range(num_steps):
        snap = doc.get(str(t))
        if not isinstance(snap, dict):
            raise _json_error(path, f"snapshot '{t}' missing (time_periods={num_steps})")
        for key in ("edges", "weights", "X", "y"):
            if key not in snap:
                raise _json_error(path, f"snapshot '{t}' has no '{key}'")
        try:
            edges = torch.tensor(snap["edges"], dtype=torch.float64)
            weights = torch.tensor(snap["weights"], dtype=torch.float32).reshape(-1)
            x = torch.tensor(snap["X"], dtype=torch.float32)
            y = torch.tensor(snap["y"], dtype=torch.float32).reshape(-1)
        except (TypeError, ValueError, RuntimeError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise _json_error(path, f"snapshot '{t}': non-numeric or ragged data ({reason})") from None
        if edges.numel() == 0:
            edges = edges.reshape(0, 2)
        elif edges.dim() != 2 or edges.shape[1] != 2:
            raise _json_error(path, f"snapshot '{t}': 'edges' must be a list of [u, v] pairs, got {tuple(edges.shape)}")
        if weights.numel() != edges.shape[0]:
            raise _json_error(path, f"snapshot '{t}': {edges.shape[0]} edges but {weights.numel()} weights")
        if x.shape != (n, 2) or y.shape != (n,):
            raise _json_error(
                path, f"snapshot '{t}': X {tuple(x.shape)} / y {tuple(y.shape)}, expected ({n}, 2) / ({n},)"
            )
        if edges.numel():
            bad = ((edges < 0) | (edges >= n) | (edges != edges.floor())).any(1).nonzero()
            if bad.numel():
                i = int(bad[0, 0])
                u, v = (int(a) if float(a).is_integer() else float(a) for a in edges[i].tolist())
                raise _json_error(path, f"snapshot '{t}' edge {i}: node id pair ({u}, {v}) outside [0, {n})")
        src_parts.append(edges[:, 0].long())
        dst_parts.append(edges[:, 1].long())
        w_parts.append(weights)
        xs.append(x)
        ys.append(y)
    if sum(p.numel() for p in src_parts) == 0:
        raise _json_error(path, "no edges in any snapshot")
    edge_indices, edge_weights = [], []
    for s, d, w in zip(src_parts, dst_parts, w_parts, strict=True):
        merged = coalesce_edges(torch.stack([s, d]), n, w)
        edge_indices.append(merged.edge_index)
        edge_weights.append(merged.edge_weight)
    graph = DynamicGraph(num_nodes=n, edge_indices=edge_indices, edge_weights=edge_weights).with_window(window)
    return DynamicGraph(
        num_nodes=n,
        edge_indices=graph.edge_indices,
        edge_weights=graph.edge_weights,
        x=torch.stack(xs),
        y=torch.stack(ys),
        snapshot_times=torch.arange(num_steps, dtype=torch.float64),
        name="twitter_tennis",
    ).validate()


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    num_steps: int | None = None,
    step_size: float | None = None,
    window: int = 1,
    remap_ids: bool = True,
    num_nodes: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> DynamicGraph:
    """Load a real dynamic graph as snapshots.

    Args:
        name: ``bitcoin_otc``, ``bitcoin_alpha``, ``uci_messages``, ``chess`` or ``twitter_tennis``.
        data_dir: data root holding ``graphs/<name>/<file>``; default :func:`resolve_data_root`; without a local
            copy the file is downloaded into ``cache_dir``.
        num_steps: number of equal-width time steps (instead of the default step size).
        step_size: step width in seconds (default: EvolveGCN's for Bitcoin/UCI, one month for chess). Not
            supported for ``twitter_tennis`` (its snapshots are fixed hours).
        window: edge-life window ``w >= 1``.
        remap_ids: remap node ids to ``0..N-1`` (default); see the module docstring.
        num_nodes: ``N`` (see :func:`read_edge_events`).
        cache_dir: download cache root.
        download: allow downloading from the real source.

    Returns:
        The :class:`DynamicGraph` (``name`` = dataset name, ``node_ids`` = raw ids when remapped).

    Raises:
        ConfigError: unknown name (the message lists the valid ones), bad step/window options.
        DataError: missing or malformed files (one line naming ``file:line``).
    """
    spec = _spec(name)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"window must be an int >= 1, got {window!r}")
    if num_steps is not None and step_size is not None:
        raise ConfigError(f"give at most one of num_steps or step_size (got {num_steps=}, {step_size=})")
    if name == "twitter_tennis":
        if (num_steps not in (None, 120)) or (step_size not in (None, 1, 1.0)):
            raise ConfigError("twitter_tennis has fixed hourly snapshots: num_steps/step_size cannot be changed")
        return load_twitter_tennis(dataset_file(name, data_dir, cache_dir, download), window=window)
    events = read_edge_events(
        name, data_dir=data_dir, remap_ids=remap_ids, num_nodes=num_nodes, cache_dir=cache_dir, download=download
    )
    if num_steps is None and step_size is None:
        step_size = spec.default_step_size
    graph = bucket_edges(
        events.src,
        events.dst,
        events.t,
        label=events.label,
        num_nodes=events.num_nodes,
        num_steps=num_steps,
        step_size=step_size,
        window=window,
        source=str(events.path),
    )
    return DynamicGraph(
        num_nodes=graph.num_nodes,
        edge_indices=graph.edge_indices,
        edge_weights=graph.edge_weights,
        edge_labels=graph.edge_labels,
        node_ids=events.node_ids,
        snapshot_times=graph.snapshot_times,
        name=name,
    ).validate()
