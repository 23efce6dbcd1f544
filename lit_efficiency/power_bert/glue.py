"""GLUE (and IMDB) text classification as a Lightning DataModule.

Where the data comes from, per task (``source="auto"``):

1. a local GLUE folder in the layout written by ``download_glue_data.py``: ``<glue>/<Folder>/{train,dev,test}.tsv``
   (``Folder`` is CoLA, SST-2, MRPC, QQP, STS-B, MNLI, QNLI, RTE or WNLI; MNLI has ``dev_matched.tsv``,
   ``dev_mismatched.tsv``, ``test_matched.tsv``, ``test_mismatched.tsv``). ``<glue>`` is ``glue_dir`` when given,
   else ``resolve_data_root(data_dir) / "glue"``;
2. otherwise the download cache ``<cache>/glue/<Folder>`` (``<cache>`` is :func:`~lit_efficiency.core.paths.
   cache_dir`), filled on first use from the official GLUE archives over https, each checked against its published
   size and sha256 before it is unpacked (:mod:`lit_efficiency.power_bert.glue_sources`).

IMDB (task ``"imdb"``) reads an ``aclImdb`` folder (``{train,test}/{pos,neg}/*.txt``): ``imdb_dir`` when given, else
``<data root>/aclImdb`` or ``<data root>/imdb/aclImdb``; otherwise ``<cache>/aclImdb``, unpacked from the verified
official ``aclImdb_v1.tar.gz``.

Splits and hooks:

* ``train_dataloader``: the train split (shuffled).
* ``val_dataloader`` and ``test_dataloader``: the GLUE dev split (``dev_matched`` for ``mnli``, ``dev_mismatched``
  for ``mnli-mm``), because the official GLUE test files have no labels. For IMDB the dev split is a seeded
  held-out 10 % of the official train split (the other 90 % is trained on) and ``test_dataloader`` is the official
  (labelled) test split.
* ``predict_dataloader``: the test file (``test.tsv``; unlabeled for GLUE, the labelled test split for IMDB).
  Predict batches carry ``idx`` (row position in the file) so that length-sorted predictions can be put back in
  file order.

Batches are dicts of tensors: ``input_ids``, ``attention_mask``, ``token_type_ids`` (``LongTensor [B, T]``) and
``labels`` (``FloatTensor [B]`` for STS-B, ``LongTensor [B]`` otherwise). ``T`` is ``max_seq_len`` with static
padding (the paper's setting) and the longest sequence of the batch with dynamic padding.

The TSV readers (:func:`read_glue_tsv`, :func:`read_glue_split`, :func:`read_imdb_split`) are plain Python and raise
:class:`~lit_efficiency.core.errors.DataError` with a one-line ``path:line: ...`` message on malformed input.
``transformers`` and ``datasets`` are imported lazily, inside the hooks.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import random
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from lit_efficiency.core.checks import check_at_least
from lit_efficiency.core.deprecation import REMOVED_IN, LitEfficiencyDeprecationWarning
from lit_efficiency.core.downloads import require_https
from lit_efficiency.core.errors import ConfigError, DataError
from lit_efficiency.core.paths import ENV_DATA, cache_dir, require_file, resolve_data_root, resolve_pretrained
from lit_efficiency.power_bert.glue_sources import fetch_glue_folder, fetch_imdb
from lit_efficiency.power_bert.tasks_table import (
    GLUE_TASKS,
    TASK_DEFAULTS,
    TASK_INFO,
    TaskDefaults,
    TaskInfo,
    canonical_task,
)

log = logging.getLogger(__name__)

Split = Literal["train", "dev", "test"]

#: Fraction of the official IMDB train split held out (seeded) as the dev split.
IMDB_DEV_FRACTION = 0.1
#: Examples tokenised per call (one progress-bar step each).
TOKENISE_CHUNK = 1000


@dataclass(frozen=True)
class _TsvFormat:
    """How one task's TSV files are laid out: text/label columns by header name, raw label value -> id."""

    text_columns: tuple[str, ...]
    label_column: str
    label_values: dict[str, int] | None  # None: a float score (STS-B)
    implied_header: tuple[str, ...] | None = None  # header of the labelled files that have none (CoLA)
    files: tuple[str, str, str] = ("train.tsv", "dev.tsv", "test.tsv")


_BIN = {"0": 0, "1": 1}
_FORMATS: dict[str, _TsvFormat] = {
    "cola": _TsvFormat(("sentence",), "label", _BIN, implied_header=("source", "label", "original_label", "sentence")),
    "sst2": _TsvFormat(("sentence",), "label", _BIN),
    "mrpc": _TsvFormat(("#1 String", "#2 String"), "Quality", _BIN),
    "qqp": _TsvFormat(("question1", "question2"), "is_duplicate", _BIN),
    "stsb": _TsvFormat(("sentence1", "sentence2"), "score", None),
    "mnli": _TsvFormat(
        ("sentence1", "sentence2"),
        "gold_label",
        {"entailment": 0, "neutral": 1, "contradiction": 2},
        files=("train.tsv", "dev_matched.tsv", "test_matched.tsv"),
    ),
    "mnli-mm": _TsvFormat(
        ("sentence1", "sentence2"),
        "gold_label",
        {"entailment": 0, "neutral": 1, "contradiction": 2},
        files=("train.tsv", "dev_mismatched.tsv", "test_mismatched.tsv"),
    ),
    "qnli": _TsvFormat(("question", "sentence"), "label", {"entailment": 0, "not_entailment": 1}),
    "rte": _TsvFormat(("sentence1", "sentence2"), "label", {"entailment": 0, "not_entailment": 1}),
    "wnli": _TsvFormat(("sentence1", "sentence2"), "label", _BIN),
}

Columns = dict[str, list]


def read_glue_tsv(path: str | Path, task: str, labeled: bool = True) -> Columns:
    """Read one GLUE TSV file (tab-separated, ``csv.QUOTE_NONE``, UTF-8 with optional BOM).

    Args:
        path: the file.
        task: task name (decides the columns and the label values).
        labeled: read the label column (train/dev files); False for the unlabeled test files.

    Returns:
        ``{"text_a": [...], "text_b": [...] (pair tasks only), "label": [...] (if labeled)}``, in file order.
        Labels are ints (class ids in :data:`TASK_INFO` order) or floats for STS-B.

    Raises:
        DataError: missing file, bytes that are not UTF-8, an oversized field, a row with the wrong number of columns,
            a missing column, an unknown label, no data rows (the message names the file and line).
    """
    task = canonical_task(task)
    if task == "imdb":
        raise ConfigError("task: 'imdb' is not a GLUE TSV task (use read_imdb_split)")
    fmt = _FORMATS[task]
    path = require_file(path, f"GLUE {task} file")
    text_a: list[str] = []
    text_b: list[str] = []
    labels: list[int | float] = []
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        if labeled and fmt.implied_header is not None:
            header = list(fmt.implied_header)
        else:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}:1: empty file (expected a header row)")
        where = f"{path}:1"  # the header's line, also for implied headers (the column layout is wrong there)
        index = {name: i for i, name in enumerate(header)}
        missing = [c for c in fmt.text_columns if c not in index]
        if missing:
            raise DataError(f"{where}: missing column {missing[0]!r} for task {task} (header: {', '.join(header)})")
        text_idx = [index[c] for c in fmt.text_columns]
        if labeled:
            if fmt.label_column not in index:
                raise DataError(
                    f"{where}: missing label column {fmt.label_column!r} for task {task} (header: {', '.join(header)})"
                )
            label_idx = index[fmt.label_column]
        n_cols = len(header)
        for row in reader:
            if not row:  # blank line
                continue
            line = reader.line_num
            if len(row) != n_cols:
                raise DataError(f"{path}:{line}: expected {n_cols} tab-separated columns, got {len(row)}")
            text_a.append(row[text_idx[0]])
            if len(text_idx) > 1:
                text_b.append(row[text_idx[1]])
            if labeled:
                labels.append(_parse_label(row[label_idx], fmt, task, f"{path}:{line}"))
    except csv.Error as err:  # a field over csv.field_size_limit(), a NUL byte
        raise DataError(f"{path}:{reader.line_num}: unreadable TSV row ({err})") from err
    if not text_a:
        raise DataError(f"{path}: no examples (the file has no data rows after line {max(reader.line_num, 1)})")
    out: Columns = {"text_a": text_a}
    if len(fmt.text_columns) > 1:
        out["text_b"] = text_b
    if labeled:
        out["label"] = labels
    return out


def _read_text(path: Path) -> str:
    """The file decoded as UTF-8 (optional BOM); bytes that are not UTF-8 text (or a NUL byte: a binary file) are a
    one-line error naming the line."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    if b"\x00" in data:
        line = data[: data.index(b"\x00")].count(b"\n") + 1
        raise DataError(f"{path}:{line}: NUL byte (a binary file, not UTF-8 text); convert the file to UTF-8 text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte {data[err.start]:#04x}); convert the file to UTF-8"
        ) from None


def _parse_label(raw: str, fmt: _TsvFormat, task: str, where: str) -> int | float:
    value = raw.strip()
    if fmt.label_values is None:
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not (0.0 <= score <= 5.0):  # also rejects nan
            raise DataError(f"{where}: unknown label {raw!r} for task {task} (expected a similarity score in [0, 5])")
        return score
    if value not in fmt.label_values:
        raise DataError(f"{where}: unknown label {raw!r} for task {task} (expected {', '.join(fmt.label_values)})")
    return fmt.label_values[value]


def read_glue_split(task: str, split: Split, glue_dir: str | Path) -> Columns:
    """Read the ``train``/``dev``/``test`` file of ``task`` from a GLUE folder (``<glue_dir>/<Folder>/...``).

    ``dev`` is ``dev_matched.tsv`` for ``mnli`` and ``dev_mismatched.tsv`` for ``mnli-mm``; ``test`` is unlabeled.
    """
    task = canonical_task(task)
    fmt = _FORMATS.get(task)
    if fmt is None:
        raise ConfigError(f"task: {task!r} is not a GLUE task (valid: {', '.join(GLUE_TASKS)})")
    filename = fmt.files[("train", "dev", "test").index(split)]
    path = Path(glue_dir) / TASK_INFO[task].folder / filename
    return read_glue_tsv(path, task, labeled=split != "test")


def read_imdb_split(imdb_dir: str | Path, split: Literal["train", "test"]) -> Columns:
    """Read ``<imdb_dir>/<split>/{neg,pos}/*.txt`` (neg = 0, pos = 1; files sorted by name, neg first)."""
    texts: list[str] = []
    labels: list[int] = []
    for label, polarity in enumerate(("neg", "pos")):
        folder = Path(imdb_dir) / split / polarity
        if not folder.is_dir():
            raise DataError(
                f"IMDB folder not found: {folder} (expected aclImdb/{{train,test}}/{{pos,neg}}/*.txt;"
                f" set ${ENV_DATA} or pass imdb_dir)"
            )
        files = sorted(folder.glob("*.txt"))
        if not files:
            raise DataError(f"IMDB folder has no *.txt reviews: {folder}")
        for file in files:
            texts.append(_read_text(file))
            labels.append(label)
    return {"text_a": texts, "label": labels}


def subset_indices(n: int, limit: int | None, seed: int) -> list[int]:
    """A seeded random subset of ``range(n)`` of size ``min(limit, n)``, in increasing order; all of it if no limit."""
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def _take(columns: Columns, indices: Sequence[int]) -> Columns:
    return {key: [values[i] for i in indices] for key, values in columns.items()}


class PadCollator:
    """Pad tokenised examples into a batch of tensors.

    Args:
        pad_token_id: id written into padded positions of ``input_ids``.
        pad_to: static length (every batch is ``[B, pad_to]``); None pads to the longest example of the batch.
        label_dtype: dtype of ``labels`` (``torch.float32`` for regression, ``torch.long`` otherwise).
        with_idx: also return the examples' ``idx`` (row positions; predict batches).

    Shapes:
        input: a list of ``B`` dicts with ``input_ids``/``token_type_ids`` lists of length ``T_i``, optional
        ``labels`` (scalar) and ``idx`` (int).
        output: ``input_ids``, ``attention_mask``, ``token_type_ids``: ``[B, T]`` long, ``T = pad_to`` or
        ``max_i T_i``; ``labels``: ``[B]``; ``idx``: ``[B]`` long.
    """

    def __init__(
        self,
        pad_token_id: int,
        pad_to: int | None = None,
        label_dtype: torch.dtype = torch.long,
        with_idx: bool = False,
    ) -> None:
        self.pad_token_id = pad_token_id
        self.pad_to = pad_to
        self.label_dtype = label_dtype
        self.with_idx = with_idx

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = [len(f["input_ids"]) for f in features]
        longest = max(lengths)
        width = longest if self.pad_to is None else self.pad_to
        if longest > width:
            raise ValueError(f"example of length {longest} does not fit pad_to={width} (truncate when tokenising)")
        batch_size = len(features)
        input_ids = torch.full((batch_size, width), self.pad_token_id, dtype=torch.long)
        token_type_ids = torch.zeros((batch_size, width), dtype=torch.long)
        attention_mask = torch.zeros((batch_size, width), dtype=torch.long)
        for row, (feature, length) in enumerate(zip(features, lengths, strict=True)):
            input_ids[row, :length] = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            types = feature.get("token_type_ids")
            if types is not None:
                token_type_ids[row, :length] = torch.as_tensor(types, dtype=torch.long)
            attention_mask[row, :length] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if "labels" in features[0]:
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=self.label_dtype)
        if self.with_idx:
            batch["idx"] = torch.tensor([f["idx"] for f in features], dtype=torch.long)
        return batch


class LengthSortedBatchSampler(BatchSampler):
    """Batches of the sampler's indices in decreasing length order (stable), so dynamic padding wastes little.

    Meant for inference: every batch holds examples of similar length. A :class:`~torch.utils.data.BatchSampler`
    subclass, so Lightning can wrap it (predict) or rebuild it around a ``DistributedSampler``.

    Args:
        sampler: indices to batch (e.g. ``range(len(dataset))`` or a ``DistributedSampler``).
        batch_size: examples per batch.
        drop_last: drop the last, smaller batch.
        lengths: token count of every example of the dataset, indexed by dataset index.
    """

    def __init__(
        self, sampler: Iterable[int], batch_size: int, drop_last: bool = False, *, lengths: Sequence[int]
    ) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.lengths = list(lengths)

    def __iter__(self) -> Iterator[list[int]]:
        order = sorted(self.sampler, key=lambda i: -self.lengths[i])
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            if self.drop_last and len(batch) < self.batch_size:
                return
            yield batch


def _check_hub_endpoint() -> None:
    """Tokenizer downloads from the HF hub go over https only: ``HF_ENDPOINT`` (a mirror) must be ``https://``."""
    require_https(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), "HF_ENDPOINT")


class GLUEDataModule(L.LightningDataModule):
    """GLUE tasks (and IMDB) tokenised for BERT-style models.

    Args:
        task: ``cola``, ``sst2``, ``mrpc``, ``qqp``, ``stsb``, ``mnli`` (dev = dev_matched), ``mnli-mm``
            (dev = dev_mismatched), ``qnli``, ``rte``, ``wnli`` or ``imdb``; GLUE folder spellings (``SST-2``) work.
        tokenizer_name: HF hub name, local folder or alias (``minilm-l6``) given to ``AutoTokenizer``.
        data_dir: data root holding ``glue/`` (and ``aclImdb/``); default: :func:`resolve_data_root`.
        glue_dir: the GLUE folder itself (holding ``CoLA/``, ``SST-2/``, ...); wins over ``data_dir``.
        imdb_dir: the ``aclImdb`` folder itself; wins over ``data_dir``.
        source: ``auto`` uses the local copy when the task's folder exists (always when ``glue_dir``/``imdb_dir``
            is given) and the verified download (cached) otherwise; ``local`` / ``download`` force one. ``hub``
            (the former HF hub source) is a deprecated alias of ``download``.
        max_seq_len: truncation (and static padding) length; None = the task default (:data:`TASK_DEFAULTS`).
        batch_size: training batch size; None = the task default.
        eval_batch_size: batch size of the val/test/predict loaders; None = ``batch_size``.
        padding: ``static`` pads every batch to ``max_seq_len`` (the paper's setting); ``dynamic`` pads to the
            longest example of the batch.
        sort_by_length: order val/test/predict batches by decreasing length (useful with dynamic padding;
            single-device inference; predictions map back through the batch's ``idx``).
        train_limit: keep a seeded random subset of this many training examples (file order kept); for CPU runs.
        eval_limit: the same for the dev and predict splits.
        seed: seed of the limit subsets and of the IMDB dev hold-out.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        task: str = "sst2",
        tokenizer_name: str = "bert-base-uncased",
        data_dir: str | None = None,
        glue_dir: str | None = None,
        imdb_dir: str | None = None,
        source: Literal["auto", "local", "download", "hub"] = "auto",
        max_seq_len: int | None = None,
        batch_size: int | None = None,
        eval_batch_size: int | None = None,
        padding: Literal["static", "dynamic"] = "static",
        sort_by_length: bool = False,
        train_limit: int | None = None,
        eval_limit: int | None = None,
        seed: int = 42,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.task = canonical_task(task)
        defaults = TASK_DEFAULTS[self.task]
        if padding not in ("static", "dynamic"):
            raise ConfigError(f"padding: must be 'static' or 'dynamic', got {padding!r}")
        if source == "hub":
            warnings.warn(
                f"source: 'hub' is now 'download' (the verified official archives); 'hub' is removed in "
                f"lit_efficiency {REMOVED_IN}",
                LitEfficiencyDeprecationWarning,
                stacklevel=2,
            )
            source = "download"
        if source not in ("auto", "local", "download"):
            raise ConfigError(f"source: must be 'auto', 'local' or 'download', got {source!r}")
        for name, value in (
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("train_limit", train_limit),
            ("eval_limit", eval_limit),
        ):
            check_at_least(name, value, 1, "or null")
        check_at_least("max_seq_len", max_seq_len, 4)
        check_at_least("num_workers", num_workers, 0)
        self.tokenizer_name = tokenizer_name
        self.data_dir = data_dir
        self.glue_dir = glue_dir
        self.imdb_dir = imdb_dir
        self.source = source
        self.max_seq_len = max_seq_len if max_seq_len is not None else defaults.max_seq_len
        self.batch_size = batch_size if batch_size is not None else defaults.batch_size
        self.eval_batch_size = eval_batch_size if eval_batch_size is not None else self.batch_size
        self.padding = padding
        self.sort_by_length = sort_by_length
        self.train_limit = train_limit
        self.eval_limit = eval_limit
        self.seed = seed
        self.num_workers = num_workers
        self.tokenizer = None
        self.show_progress = True  # tokenisation bar on a terminal; off too when the attached Trainer has no bar
        self.datasets: dict[str, Any] = {}  # split -> datasets.Dataset of tokenised examples
        self._raw: dict[str, Columns] = {}  # IMDB's official train split, read once for train + dev

    # ------------------------------------------------------------------ task metadata (no I/O)
    @property
    def task_info(self) -> TaskInfo:
        """Label set, metrics and data location of the task."""
        return TASK_INFO[self.task]

    @property
    def defaults(self) -> TaskDefaults:
        """The task's reference hyper-parameters."""
        return TASK_DEFAULTS[self.task]

    @property
    def num_labels(self) -> int:
        """Classifier outputs (1 for STS-B); link it to the model with ``link_arguments``."""
        return TASK_INFO[self.task].num_labels

    @property
    def label_names(self) -> tuple[str, ...]:
        """Class names in label-id order (empty for STS-B)."""
        return TASK_INFO[self.task].labels

    # ------------------------------------------------------------------ where the data comes from
    def _local_dir(self) -> tuple[Path | None, bool, str]:
        """Return (local task folder or None, explicitly given?, description of where we looked)."""
        if self.task == "imdb":
            if self.imdb_dir is not None:
                return Path(self.imdb_dir).expanduser(), True, str(self.imdb_dir)
            root = resolve_data_root(self.data_dir)
            if root is None:
                return None, False, f"no data root (${ENV_DATA} unset)"
            candidates = [root / "aclImdb", root / "imdb" / "aclImdb"]
            for candidate in candidates:
                if candidate.is_dir():
                    return candidate, self.data_dir is not None, str(candidate)
            return None, False, " or ".join(str(c) for c in candidates)
        folder = TASK_INFO[self.task].folder
        if self.glue_dir is not None:
            return Path(self.glue_dir).expanduser() / folder, True, str(Path(self.glue_dir) / folder)
        root = resolve_data_root(self.data_dir)
        if root is None:
            return None, False, f"no data root (${ENV_DATA} unset)"
        path = root / "glue" / folder
        return (path if path.is_dir() else None), False, str(path)

    def _use_local(self) -> Path | None:
        """The local folder to read, or None for the download cache; raises when ``source="local"`` has none."""
        if self.source == "download":
            return None
        local, explicit, looked = self._local_dir()
        if local is not None and (local.is_dir() or explicit):
            if not local.is_dir():
                raise DataError(f"{self.task} data folder not found: {local} (given explicitly)")
            return local
        if self.source == "local":
            raise DataError(f"{self.task}: no local data folder ({looked}); set ${ENV_DATA} or pass glue_dir/data_dir")
        log.info("%s: no local copy (%s); using the verified download", self.task, looked)
        return None

    def _data_folder(self) -> Path:
        """The folder to read: the local copy, else the download cache (filled now from the verified download)."""
        local = self._use_local()
        if local is not None:
            return local
        folder = cache_dir() / ("aclImdb" if self.task == "imdb" else f"glue/{TASK_INFO[self.task].folder}")
        if not folder.is_dir():
            try:
                if self.task == "imdb":
                    fetch_imdb(folder.parent)
                else:
                    fetch_glue_folder(folder.name, folder.parent)
            except DataError as err:
                raise DataError(
                    f"{self.task}: no local copy and the download failed: {err}; for offline use pass a local copy"
                    f" (glue_dir/imdb_dir/data_dir or ${ENV_DATA})"
                ) from None
        return folder

    def _read_raw(self, split: Split) -> Columns:
        """Raw text columns of one split, limits applied."""
        if self.task == "imdb":
            columns = self._read_imdb(split)
        else:
            columns = read_glue_split(self.task, split, self._data_folder().parent)
        n = len(columns["text_a"])
        limit = self.train_limit if split == "train" else self.eval_limit
        keep = subset_indices(n, limit, self.seed)
        if len(keep) < n:
            columns = _take(columns, keep)
        columns["idx"] = keep  # row position in the source split
        return columns

    def _read_imdb(self, split: Split) -> Columns:
        folder = self._data_folder()
        if split == "test":
            return read_imdb_split(folder, "test")
        if "imdb_train" not in self._raw:
            self._raw["imdb_train"] = read_imdb_split(folder, "train")
        full = self._raw["imdb_train"]
        n = len(full["text_a"])
        n_dev = max(1, round(IMDB_DEV_FRACTION * n))
        dev = set(random.Random(self.seed).sample(range(n), n_dev))
        indices = [i for i in range(n) if (i in dev) == (split == "dev")]
        return _take(full, indices)

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Fetch the tokenizer (HF cache) and, without a local copy, the verified dataset download (our cache)."""
        from transformers import AutoTokenizer

        _check_hub_endpoint()
        AutoTokenizer.from_pretrained(resolve_pretrained(self.tokenizer_name))
        self._data_folder()

    def setup(self, stage: str | None = None) -> None:
        """Read and tokenise the splits the stage needs (``fit``: train + dev; ``validate``/``test``: dev;
        ``predict``: test)."""
        needed: dict[str | None, tuple[Split, ...]] = {
            "fit": ("train", "dev"),
            "validate": ("dev",),
            "test": ("dev",),
            "predict": ("test",),
            None: ("train", "dev"),
        }
        if self.task == "imdb" and stage == "test":
            needed["test"] = ("test",)
        if self.tokenizer is None:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained(self.tokenizer_name))
        for split in needed.get(stage, ("train", "dev")):
            if split not in self.datasets:
                self.datasets[split] = self._tokenise(self._read_raw(split), split)

    def _tokenise(self, columns: Columns, split: Split) -> Any:
        import datasets

        from lit_efficiency.core.progress import progress_bar, trainer_wants_progress

        text_a, text_b = columns["text_a"], columns.get("text_b")
        data: dict[str, list] = {"input_ids": [], "token_type_ids": []}
        enabled = self.show_progress and trainer_wants_progress(self.trainer)
        with progress_bar(len(text_a), f"tokenising {split}", enabled, unit="ex") as bar:
            for start in range(0, len(text_a), TOKENISE_CHUNK):
                part = slice(start, start + TOKENISE_CHUNK)
                encoded = self.tokenizer(
                    text_a[part],
                    text_b[part] if text_b is not None else None,
                    truncation=True,
                    max_length=self.max_seq_len,
                    padding=False,
                    return_token_type_ids=True,
                    return_attention_mask=False,
                )
                for key in data:
                    data[key] += encoded[key]
                bar.update(len(encoded["input_ids"]))
        if "label" in columns and (split != "test" or self.task == "imdb"):
            data["labels"] = columns["label"]
        data["idx"] = columns["idx"]
        return datasets.Dataset.from_dict(data)

    def _collator(self, with_idx: bool = False) -> PadCollator:
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        label_dtype = torch.float32 if self.task_info.is_regression else torch.long
        return PadCollator(pad_id, self.max_seq_len if self.padding == "static" else None, label_dtype, with_idx)

    def _dataset(self, split: Split, hook: str) -> Any:
        if split not in self.datasets:
            raise RuntimeError(f"{hook}: call setup() first (split {split!r} is not loaded)")
        return self.datasets[split]

    def _loader(self, split: Split, hook: str, train: bool = False, with_idx: bool = False) -> DataLoader:
        dataset = self._dataset(split, hook)
        common = {
            "collate_fn": self._collator(with_idx),
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
        }
        if train:
            return DataLoader(dataset, batch_size=self.batch_size, shuffle=True, **common)
        if self.sort_by_length:
            lengths = [len(ids) for ids in dataset["input_ids"]]
            sampler = LengthSortedBatchSampler(SequentialSampler(dataset), self.eval_batch_size, lengths=lengths)
            return DataLoader(dataset, batch_sampler=sampler, **common)
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False, **common)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches."""
        return self._loader("train", "train_dataloader", train=True)

    def val_dataloader(self) -> DataLoader:
        """Dev-split batches (GLUE dev; IMDB held-out slice of train)."""
        return self._loader("dev", "val_dataloader")

    def test_dataloader(self) -> DataLoader:
        """GLUE: the dev split again (GLUE test files have no labels). IMDB: the official labelled test split."""
        return self._loader("test" if self.task == "imdb" else "dev", "test_dataloader")

    def predict_dataloader(self) -> DataLoader:
        """Test-file batches with ``idx`` (row position) and no labels (IMDB keeps its labels)."""
        return self._loader("test", "predict_dataloader", with_idx=True)
