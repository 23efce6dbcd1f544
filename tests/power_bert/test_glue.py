"""GLUEDataModule and the GLUE/IMDB readers.

References: the row and label counts published in shared/data/README.md, hand-written tiny TSV trees (with the
exact error lines they must produce), hand-computed token ids of a tiny WordPiece vocab, and direct tokenizer calls
on strings read from the raw files with ``str.split`` (not through the module's reader).
"""

from __future__ import annotations

import collections
import string
from pathlib import Path

import pytest
import torch

from lit_efficiency.core.deprecation import LitEfficiencyDeprecationWarning
from lit_efficiency.core.errors import ConfigError, DataError
from lit_efficiency.core.paths import resolve_data_root
from lit_efficiency.core.trainer import quiet_trainer
from lit_efficiency.power_bert.glue import (
    GLUE_TASKS,
    TASK_DEFAULTS,
    TASK_INFO,
    GLUEDataModule,
    LengthSortedBatchSampler,
    canonical_task,
    read_glue_split,
    read_glue_tsv,
    read_imdb_split,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "cat", "a", "dog", "sat", "is", "on", "mat"]
CHARS = list(string.ascii_lowercase + string.digits)
PUNCT = list(".,'\"!?;:-()$%&/")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    """A tiny uncased WordPiece tokenizer saved as an HF folder (no downloads): ids 0-4 specials, 5.. WORDS."""
    from transformers import BertTokenizer

    vocab = list(dict.fromkeys(SPECIALS + WORDS + CHARS + ["##" + c for c in CHARS] + PUNCT))  # "a" once
    folder = tmp_path_factory.mktemp("tiny_tok")
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


def _write(path: Path, lines: list[str], bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def _real_glue() -> Path:
    root = resolve_data_root()
    if root is None or not (root / "glue").is_dir():
        pytest.skip("no shared data root (set $LIT_EFFICIENCY_DATA to the shared/data folder)")
    return root / "glue"


# ---------------------------------------------------------------- real files: counts from shared/data/README.md
ROW_COUNTS = [
    ("cola", "train", 8551),
    ("cola", "dev", 1043),
    ("cola", "test", 1063),
    ("sst2", "train", 67349),
    ("sst2", "dev", 872),
    ("sst2", "test", 1821),
    ("mrpc", "train", 3668),
    ("mrpc", "dev", 408),
    ("mrpc", "test", 1725),
    ("rte", "train", 2490),
    ("rte", "dev", 277),
    ("rte", "test", 3000),
    ("stsb", "train", 5749),
    ("stsb", "dev", 1500),
    ("stsb", "test", 1379),
    ("wnli", "train", 635),
    ("wnli", "dev", 71),
    ("wnli", "test", 146),
    ("qnli", "dev", 5463),
    ("qnli", "test", 5463),
]


@pytest.mark.parametrize("task,split,rows", ROW_COUNTS, ids=[f"{t}-{s}" for t, s, _ in ROW_COUNTS])
def test_real_row_counts(task, split, rows):
    cols = read_glue_split(task, split, _real_glue())
    assert len(cols["text_a"]) == rows
    assert all(len(v) == rows for v in cols.values())
    assert ("text_b" in cols) == (task not in ("cola", "sst2"))
    assert ("label" in cols) == (split != "test")


# label id -> count; ids follow TASK_INFO label order (RTE/QNLI: 0 = entailment)
LABEL_COUNTS = [
    ("cola", "train", {1: 6023, 0: 8551 - 6023}),
    ("cola", "dev", {1: 721, 0: 322}),
    ("sst2", "train", {1: 37569, 0: 29780}),
    ("sst2", "dev", {1: 444, 0: 872 - 444}),
    ("mrpc", "train", {1: 2474, 0: 3668 - 2474}),
    ("mrpc", "dev", {1: 279, 0: 408 - 279}),
    ("rte", "dev", {0: 146, 1: 277 - 146}),
]


@pytest.mark.parametrize("task,split,counts", LABEL_COUNTS, ids=[f"{t}-{s}" for t, s, _ in LABEL_COUNTS])
def test_real_label_counts(task, split, counts):
    labels = read_glue_split(task, split, _real_glue())["label"]
    assert dict(collections.Counter(labels)) == counts


def test_real_stsb_scores_and_mrpc_bom():
    glue = _real_glue()
    scores = read_glue_split("stsb", "dev", glue)["label"]
    assert all(isinstance(s, float) and 0.0 <= s <= 5.0 for s in scores)
    assert scores[:2] == [5.0, 4.75]  # first rows of STS-B/dev.tsv
    # MRPC's header starts with a BOM; the first dev row read by hand must match.
    raw = (glue / "MRPC" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1].split("\t")
    cols = read_glue_split("mrpc", "dev", glue)
    assert (cols["label"][0], cols["text_a"][0], cols["text_b"][0]) == (int(raw[0]), raw[3], raw[4])


# ---------------------------------------------------------------- bad inputs: one line naming file:line
def test_malformed_row(tmp_path):
    path = _write(
        tmp_path / "RTE" / "train.tsv",
        ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tentailment", "1\ta\tnot_entailment"],
    )
    with pytest.raises(DataError) as err:
        read_glue_tsv(path, "rte")
    assert str(err.value) == f"{path}:3: expected 4 tab-separated columns, got 3"


def test_malformed_headerless_cola_row(tmp_path):
    path = _write(tmp_path / "CoLA" / "dev.tsv", ["gj04\t1\t\tThe cat sat.", "gj04\t0\t*"])
    with pytest.raises(DataError) as err:
        read_glue_split("cola", "dev", tmp_path)
    assert str(err.value) == f"{path}:2: expected 4 tab-separated columns, got 3"


def test_quotes_are_not_special(tmp_path):
    # With csv quoting on, the bare quote would swallow the tab and the next line.
    path = _write(tmp_path / "SST-2" / "dev.tsv", ["sentence\tlabel", '" a quoted\t1', 'start " end\t0'])
    cols = read_glue_tsv(path, "sst2")
    assert cols == {"text_a": ['" a quoted', 'start " end'], "label": [1, 0]}


def test_missing_label_column(tmp_path):
    path = _write(tmp_path / "RTE" / "dev.tsv", ["index\tsentence1\tsentence2", "0\ta\tb"])
    with pytest.raises(DataError) as err:
        read_glue_split("rte", "dev", tmp_path)
    assert str(err.value) == (
        f"{path}:1: missing label column 'label' for task rte (header: index, sentence1, sentence2)"
    )


def test_unknown_label(tmp_path):
    path = _write(
        tmp_path / "RTE" / "dev.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tentailment", "1\ta\tb\tmaybe"]
    )
    with pytest.raises(DataError) as err:
        read_glue_split("rte", "dev", tmp_path)
    assert str(err.value) == f"{path}:3: unknown label 'maybe' for task rte (expected entailment, not_entailment)"


def test_bad_stsb_score(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    path = _write(tmp_path / "STS-B" / "dev.tsv", [header, "0\tg\tf\ty\t0\tn\tn\ta\tb\t7.5"])
    with pytest.raises(DataError, match=rf"^{path}:2: unknown label '7.5' for task stsb") as err:
        read_glue_split("stsb", "dev", tmp_path)
    assert "\n" not in str(err.value)


def test_missing_file_and_unknown_task(tmp_path):
    with pytest.raises(DataError) as err:
        read_glue_split("wnli", "train", tmp_path)
    assert str(err.value).startswith(f"GLUE wnli file not found: {tmp_path / 'WNLI' / 'train.tsv'}")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        GLUEDataModule(task="squad")
    assert str(err.value) == f"task: unknown task 'squad' (valid: {', '.join(TASK_INFO)})"
    with pytest.raises(ConfigError, match="^padding: "):
        GLUEDataModule(task="rte", padding="bucket")
    with pytest.raises(ConfigError, match="^source: must be "):
        GLUEDataModule(task="rte", source="hf")


def test_source_hub_is_a_deprecated_alias_of_download():
    with pytest.warns(LitEfficiencyDeprecationWarning, match="'hub' is now 'download'"):
        dm = GLUEDataModule(task="rte", source="hub")
    assert dm.source == "download"


def test_datamodule_reports_bad_file_in_setup(tmp_path, tokenizer_dir):
    _write(tmp_path / "RTE" / "train.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tyes"])
    dm = GLUEDataModule(task="rte", tokenizer_name=tokenizer_dir, glue_dir=str(tmp_path))  # no I/O yet
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    assert str(err.value).startswith(f"{tmp_path / 'RTE' / 'train.tsv'}:2: unknown label 'yes' for task rte")


# ---------------------------------------------------------------- tokenisation and padding
def _tiny_rte(root: Path) -> Path:
    header = "index\tsentence1\tsentence2\tlabel"
    _write(
        root / "RTE" / "train.tsv",
        [header]
        + [
            f"{i}\tthe cat sat on the mat {'x' * i}\ta dog\t{'entailment' if i % 2 else 'not_entailment'}"
            for i in range(10)
        ],
    )
    _write(
        root / "RTE" / "dev.tsv",
        [header, "0\tThe cat sat\ta dog\tentailment", "1\tthe dog is on the mat\tthe cat\tnot_entailment"],
    )
    _write(
        root / "RTE" / "test.tsv",
        [
            "index\tsentence1\tsentence2",
            "0\tthe cat\ta dog is on the mat",
            "1\ta\tthe",
            "2\tthe cat sat on the mat\tthe dog sat on the mat",
        ],
    )
    return root


def test_hand_computed_pair_ids(tmp_path, tokenizer_dir):
    dm = GLUEDataModule(
        task="RTE", tokenizer_name=tokenizer_dir, glue_dir=str(_tiny_rte(tmp_path)), padding="static", max_seq_len=12
    )
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    # "[CLS] the cat sat [SEP] a dog [SEP]" with ids CLS=2 SEP=3 PAD=0 the=5 cat=6 a=7 dog=8 sat=9
    assert batch["input_ids"][0].tolist() == [2, 5, 6, 9, 3, 7, 8, 3, 0, 0, 0, 0]
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0]
    assert batch["attention_mask"][0].tolist() == [1] * 8 + [0] * 4
    assert batch["labels"].tolist() == [0, 1] and batch["labels"].dtype == torch.long
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}


def test_real_pair_matches_tokenizer_on_raw_strings(tokenizer_dir, tokenizer):
    glue = _real_glue()
    dm = GLUEDataModule(
        task="rte", tokenizer_name=tokenizer_dir, glue_dir=str(glue), padding="dynamic", eval_batch_size=8
    )
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    raw_rows = [line.split("\t") for line in (glue / "RTE" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:9]]
    ref = [tokenizer(r[1], r[2], truncation=True, max_length=256) for r in raw_rows]
    longest = max(len(e["input_ids"]) for e in ref)
    assert batch["input_ids"].shape == (8, longest)  # dynamic: padded to the longest of the batch
    for row, (enc, raw) in enumerate(zip(ref, raw_rows, strict=True)):
        n = len(enc["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == enc["input_ids"]
        assert batch["token_type_ids"][row, :n].tolist() == enc["token_type_ids"]
        assert batch["attention_mask"][row].sum().item() == n
        assert (batch["input_ids"][row, n:] == tokenizer.pad_token_id).all()
        assert batch["labels"][row].item() == TASK_INFO["rte"].labels.index(raw[3])
    assert longest == 256  # the char-level vocab makes RTE pairs long: truncation happened at max_seq_len


def test_static_padding_and_train_limit(tokenizer_dir):
    glue = _real_glue()
    dm = GLUEDataModule(
        task="cola",
        tokenizer_name=tokenizer_dir,
        glue_dir=str(glue),
        train_limit=50,
        eval_limit=20,
        max_seq_len=48,
        batch_size=16,
    )
    dm.setup("fit")
    assert len(dm.train_dataloader().dataset) == 50 and len(dm.val_dataloader().dataset) == 20
    shapes = {b["input_ids"].shape[1] for b in dm.train_dataloader()}
    assert shapes == {48}
    # the subset is real rows of the file: compare the kept rows' texts with the full file.
    full = read_glue_split("cola", "train", glue)
    idx = dm.datasets["train"]["idx"]
    assert idx == sorted(idx) and len(set(idx)) == 50
    tok = dm.tokenizer
    for i, ids in zip(idx[:5], dm.datasets["train"]["input_ids"][:5], strict=True):
        assert ids == tok(full["text_a"][i], truncation=True, max_length=48)["input_ids"]
    # same seed -> same subset; different seed -> (almost surely) another one
    again = GLUEDataModule(task="cola", tokenizer_name=tokenizer_dir, glue_dir=str(glue), train_limit=50)
    other = GLUEDataModule(task="cola", tokenizer_name=tokenizer_dir, glue_dir=str(glue), train_limit=50, seed=1)
    again.setup("fit")
    other.setup("fit")
    assert again.datasets["train"]["idx"] == idx and other.datasets["train"]["idx"] != idx


def test_defaults_and_stsb_float_labels(tmp_path, tokenizer_dir):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
    _write(
        tmp_path / "STS-B" / "dev.tsv",
        [header, "0\tg\tf\ty\t0\tn\tn\tthe cat\ta cat\t3.800", "1\tg\tf\ty\t1\tn\tn\ta dog\tthe mat\t0.000"],
    )
    dm = GLUEDataModule(task="sts-b", tokenizer_name=tokenizer_dir, glue_dir=str(tmp_path))
    assert dm.num_labels == 1 and dm.max_seq_len == 64 and dm.batch_size == 64  # spec table, STS-B column
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == pytest.approx([3.8, 0.0])
    assert batch["input_ids"].shape == (2, 64)
    # spec table spot checks (power_bert.md section 3) and coverage of every task
    assert (TASK_DEFAULTS["rte"].max_seq_len, TASK_DEFAULTS["rte"].batch_size) == (256, 16)
    assert (TASK_DEFAULTS["cola"].lr_bert, TASK_DEFAULTS["cola"].mass_lambda) == (2e-5, 7e-3)
    assert TASK_DEFAULTS["mnli-mm"].lr_soft_extract == 1e-4 and TASK_DEFAULTS["mnli"].lr_soft_extract == 2e-4
    assert set(TASK_DEFAULTS) == set(TASK_INFO) and len(GLUE_TASKS) == 10
    assert [TASK_INFO[t].num_labels for t in ("cola", "mnli", "stsb", "qnli")] == [2, 3, 1, 2]
    assert canonical_task("MNLI-mm") == "mnli-mm" and canonical_task("SST-2") == "sst2"


def test_mnli_matched_and_mismatched_files(tmp_path, tokenizer_dir):
    header = "\t".join(
        [
            "index",
            "promptID",
            "pairID",
            "genre",
            "s1_bin",
            "s2_bin",
            "s1_parse",
            "s2_parse",
            "sentence1",
            "sentence2",
            "label1",
            "gold_label",
        ]
    )
    _write(tmp_path / "MNLI" / "dev_matched.tsv", [header, "0\tp\tq\tg\tb\tb\tx\ty\tthe cat\ta cat\tn\tneutral"])
    _write(
        tmp_path / "MNLI" / "dev_mismatched.tsv",
        [
            header,
            "0\tp\tq\tg\tb\tb\tx\ty\tthe dog\ta dog\tc\tcontradiction",
            "1\tp\tq\tg\tb\tb\tx\ty\tthe\ta\te\tentailment",
        ],
    )
    labels = {}
    for task in ("mnli", "mnli-mm"):
        dm = GLUEDataModule(task=task, tokenizer_name=tokenizer_dir, glue_dir=str(tmp_path), padding="dynamic")
        dm.setup("validate")
        labels[task] = next(iter(dm.val_dataloader()))["labels"].tolist()
        assert dm.num_labels == 3
    assert labels == {"mnli": [1], "mnli-mm": [2, 0]}  # entailment, neutral, contradiction = 0, 1, 2


def test_predict_sorted_by_length_maps_back(tmp_path, tokenizer_dir, tokenizer):
    root = _tiny_rte(tmp_path)
    dm = GLUEDataModule(
        task="rte",
        tokenizer_name=tokenizer_dir,
        glue_dir=str(root),
        padding="dynamic",
        sort_by_length=True,
        eval_batch_size=2,
    )
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    assert all("labels" not in b for b in batches)
    order = torch.cat([b["idx"] for b in batches]).tolist()
    assert sorted(order) == [0, 1, 2]
    lengths = [int(m.sum()) for b in batches for m in b["attention_mask"]]
    assert lengths == sorted(lengths, reverse=True)
    rows = [line.split("\t") for line in (root / "RTE" / "test.tsv").read_text().splitlines()[1:]]
    by_idx = {
        i: ids[ids != 0].tolist() for b in batches for i, ids in zip(b["idx"].tolist(), b["input_ids"], strict=True)
    }
    for i, row in enumerate(rows):
        assert by_idx[i] == tokenizer(row[1], row[2])["input_ids"]
    assert list(LengthSortedBatchSampler(range(4), 3, lengths=[3, 5, 5, 1])) == [[1, 2, 0], [3]]
    assert list(LengthSortedBatchSampler([3, 0], 1, True, lengths=[3, 5, 5, 1])) == [[0], [3]]


# ---------------------------------------------------------------- IMDB
def _tiny_imdb(root: Path) -> Path:
    for split, n in (("train", 10), ("test", 3)):
        for polarity in ("neg", "pos"):
            for i in range(n):
                _write(
                    root / split / polarity / f"{i}_{7 if polarity == 'pos' else 2}.txt",
                    [f"{polarity} review {i} of {split}<br />the cat sat"],
                )
    return root


def test_imdb_reader_and_splits(tmp_path, tokenizer_dir):
    imdb = _tiny_imdb(tmp_path / "aclImdb")
    test = read_imdb_split(imdb, "test")
    assert test["label"] == [0, 0, 0, 1, 1, 1]
    assert test["text_a"][3] == "pos review 0 of test<br />the cat sat\n"
    dm = GLUEDataModule(task="imdb", tokenizer_name=tokenizer_dir, data_dir=str(tmp_path), padding="dynamic")
    assert dm.max_seq_len == 512 and dm.num_labels == 2
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.datasets["train"]), len(dm.datasets["dev"]), len(dm.datasets["test"])) == (18, 2, 6)
    full = read_imdb_split(imdb, "train")
    tok = dm.tokenizer
    seen = [tuple(x) for split in ("train", "dev") for x in dm.datasets[split]["input_ids"]]
    assert sorted(seen) == sorted(tuple(tok(t, truncation=True, max_length=512)["input_ids"]) for t in full["text_a"])
    test_labels = torch.cat([b["labels"] for b in dm.test_dataloader()]).tolist()
    assert test_labels == [0, 0, 0, 1, 1, 1]  # test_dataloader is the official test split for IMDB
    with pytest.raises(DataError, match="^IMDB folder not found: .*train/neg"):
        read_imdb_split(tmp_path / "nowhere", "train")


def test_trainer_predict_with_length_sorted_batches(tmp_path, tokenizer_dir):
    """Lightning wraps the predict batch sampler: the length-sorted sampler must survive it and cover every row."""
    import lightning as L

    class Echo(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(()))

        def predict_step(self, batch, batch_idx):
            return batch["idx"], batch["attention_mask"].sum(1)

    dm = GLUEDataModule(
        task="rte",
        tokenizer_name=tokenizer_dir,
        glue_dir=str(_tiny_rte(tmp_path)),
        padding="dynamic",
        sort_by_length=True,
        eval_batch_size=2,
    )
    trainer = quiet_trainer()
    out = trainer.predict(Echo(), datamodule=dm)
    idx = torch.cat([o[0] for o in out]).tolist()
    lengths = torch.cat([o[1] for o in out]).tolist()
    assert sorted(idx) == [0, 1, 2] and lengths == sorted(lengths, reverse=True)
