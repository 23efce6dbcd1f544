"""Progress bars of the long silent phases: drawn on a terminal with the option on, silent otherwise.

The terminal is forced with a stderr whose ``isatty`` is True; the bars' text is read back from it.
"""

from __future__ import annotations

import io
import sys

import pytest

from lit_efficiency.core import progress, timing


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def stderr(monkeypatch):
    """Returns a function installing a fake stderr (a terminal or not) and giving it back."""
    monkeypatch.setattr(progress, "DELAY_S", 0.0)  # draw at once: the phases below last milliseconds

    def install(tty: bool) -> io.StringIO:
        stream = _Terminal() if tty else io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        return stream

    return install


def _timed(progress_on: bool) -> dict:
    fns = {"a": lambda: None, "b": lambda: None}
    return timing.interleaved(fns, "cpu", repeats=3, warmup=1, progress=progress_on)


def test_timing_bar_counts_warmup_and_rounds_on_a_terminal(stderr):
    out = stderr(tty=True)
    stats = _timed(True)
    text = out.getvalue()
    assert "timing" in text and "/8" in text  # (1 warm-up + 3 rounds) x 2 candidates
    assert "<" in text  # tqdm's elapsed<remaining (ETA) field
    assert stats["a"]["repeats"] == 3 and stats["b"]["repeats"] == 3


@pytest.mark.parametrize(("tty", "progress_on"), [(True, False), (False, True)])
def test_timing_bar_silent_when_off_or_not_a_terminal(stderr, tty, progress_on):
    out = stderr(tty=tty)
    _timed(progress_on)
    assert out.getvalue() == ""


def _tiny_rte(tmp_path, rows: int):
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "a", "dog", "sat", "on", "mat"]
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(tmp_path / "tok")
    words = vocab[5:]
    lines = ["index\tsentence1\tsentence2\tlabel"]
    for i in range(rows):
        first = " ".join(words[(i + k) % len(words)] for k in range(1 + i % 5))
        lines.append(f"{i}\t{first}\t{words[i % len(words)]}\t{'entailment' if i % 2 else 'not_entailment'}")
    (tmp_path / "RTE").mkdir()
    for split in ("train", "dev"):
        (tmp_path / "RTE" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(tmp_path / "tok"), str(tmp_path)


def test_tokenisation_bar_and_chunks_match_one_call(stderr, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from lit_efficiency.core.trainer import quiet_trainer
    from lit_efficiency.power_bert import glue

    tok, root = _tiny_rte(tmp_path, rows=23)
    monkeypatch.setattr(glue, "TOKENISE_CHUNK", 5)  # 5 calls of the tokenizer for 23 rows
    out = stderr(tty=True)
    dm = glue.GLUEDataModule(task="rte", tokenizer_name=tok, glue_dir=root)
    dm.setup("validate")
    assert "tokenising dev" in out.getvalue() and "/23" in out.getvalue()
    raw = glue.read_glue_split("rte", "dev", root)
    whole = AutoTokenizer.from_pretrained(tok)(raw["text_a"], raw["text_b"], return_token_type_ids=True)
    assert dm.datasets["dev"]["input_ids"] == whole["input_ids"]
    assert dm.datasets["dev"]["token_type_ids"] == whole["token_type_ids"]

    out = stderr(tty=True)
    silent = glue.GLUEDataModule(task="rte", tokenizer_name=tok, glue_dir=root)
    silent.trainer = quiet_trainer()  # a Trainer with enable_progress_bar=False is attached: no bar
    silent.setup("validate")
    assert out.getvalue() == ""
    assert silent.datasets["dev"]["input_ids"] == whole["input_ids"]
