"""``lit-efficiency predict`` on GLUE writes the benchmark's submission file."""

import csv
from pathlib import Path

import pytest
import torch

from lit_efficiency.cli import CONF_DIR, main
from lit_efficiency.core.paths import resolve_data_root, resolve_pretrained
from lit_efficiency.power_bert.model import PowerBertForSequenceClassification
from lit_efficiency.power_bert.submission import format_prediction, submission_name, write_submission


def test_submission_rows_are_sorted_by_index_and_formatted_per_task(tmp_path):
    path = write_submission(tmp_path / "RTE.tsv", "rte", torch.tensor([2, 0, 1]), torch.tensor([1, 0, 1]))
    assert path.read_text() == "index\tprediction\n0\tentailment\n1\tnot_entailment\n2\tnot_entailment\n"
    assert format_prediction("cola", 1) == "1" and format_prediction("mnli", 2) == "contradiction"
    assert format_prediction("stsb", 5.7) == "5.000" and format_prediction("stsb", -0.2) == "0.000"
    assert [submission_name(t) for t in ("rte", "SST-2", "mnli", "mnli-mm")] == [
        "RTE.tsv", "SST-2.tsv", "MNLI-m.tsv", "MNLI-mm.tsv"
    ]  # fmt: skip


@pytest.mark.slow
def test_predict_writes_the_glue_submission(tmp_path, monkeypatch):
    """Predictions for a seeded subset of RTE's test file, each equal to the exported model's own argmax on its row."""
    from transformers import AutoTokenizer

    monkeypatch.chdir(tmp_path)
    tiny = resolve_pretrained("tiny-random-bert")
    common = ["--config", str(CONF_DIR / "power_bert/stages/finetune.yaml"), "--trainer.accelerator=cpu",
              "--data.init_args.task=rte", "--data.init_args.train_limit=16", "--data.init_args.eval_limit=12",
              "--data.init_args.max_seq_len=48", f"--data.init_args.tokenizer_name={tiny}",
              "--trainer.enable_progress_bar=false"]  # fmt: skip
    main(["fit", *common, f"--model.init_args.model_name_or_path={tiny}", "--model.init_args.export_dir=ft",
          "--trainer.max_steps=1", "--trainer.max_epochs=1"])  # fmt: skip
    main(["predict", *common, "--model.init_args.model_name_or_path=ft"])
    [path] = Path("runs/csv").glob("version_*/predictions/RTE.tsv")
    rows = list(csv.DictReader(path.open(), delimiter="\t"))
    assert len(rows) == 12 and [int(r["index"]) for r in rows] == sorted(int(r["index"]) for r in rows)
    test_file = resolve_data_root(None) / "glue" / "RTE" / "test.tsv"
    source = {r["index"]: r for r in csv.DictReader(test_file.open(), delimiter="\t", quoting=csv.QUOTE_NONE)}
    tokenizer = AutoTokenizer.from_pretrained("ft")
    model = PowerBertForSequenceClassification.from_pretrained("ft").eval()
    labels = ("entailment", "not_entailment")
    for row in rows:
        example = source[row["index"]]
        batch = tokenizer(example["sentence1"], example["sentence2"], truncation=True, max_length=48,
                          return_tensors="pt")  # fmt: skip
        with torch.no_grad():
            logits = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
        assert row["prediction"] == labels[int(logits.argmax(-1))], row
