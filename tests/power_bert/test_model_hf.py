"""HF-native loading: own model_type and labels, Auto-class registration on import, clear failure without it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import lit_efficiency  # noqa: F401  (registers the Auto classes)
from lit_efficiency.power_bert.autoload import MODEL_TYPE
from lit_efficiency.power_bert.model import PowerBertForSequenceClassification
from tests.power_bert.test_bert import padded_batch, tiny_bert_config
from tests.power_bert.test_bert_families import tiny_distilbert_config

transformers = pytest.importorskip("transformers")


@pytest.fixture
def saved_hard(tmp_path):
    torch.manual_seed(0)
    model = PowerBertForSequenceClassification(
        tiny_bert_config(), num_labels=2, mode="hard", retention=[6, 4, 2], label_names=["negative", "positive"]
    ).eval()
    model.save_pretrained(tmp_path)
    return model, tmp_path


def test_saved_folder_has_own_model_type_labels_and_card(saved_hard):
    _, folder = saved_hard
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == MODEL_TYPE and config["base_model_type"] == "bert"
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    card = (folder / "README.md").read_text()
    assert "import lit_efficiency" in card and "6, 4, 2" in card and "negative, positive" in card


def test_auto_class_returns_the_eliminating_model_in_eval_mode(saved_hard):
    model, folder = saved_hard
    auto = transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    assert type(auto).__name__ == "HFPowerBertForSequenceClassification" and not auto.training
    assert auto.config.id2label == {0: "negative", 1: "positive"}
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        out = auto(input_ids=ids, attention_mask=mask, token_type_ids=tt, labels=torch.tensor([0, 1, 1]))
        want = model(ids, mask, tt)
        plain = transformers.BertForSequenceClassification.from_pretrained(folder).eval()(
            input_ids=ids, attention_mask=mask, token_type_ids=tt
        )
    assert torch.equal(out.logits, want.logits) and want.encoder.last_hidden_state.shape[1] == 2
    assert not torch.allclose(out.logits, plain.logits, atol=1e-4)  # elimination changes the prediction
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(want.logits, torch.tensor([0, 1, 1])))
    assert set(auto.state_dict()) == set(model.state_dict())
    auto.save_pretrained(folder / "again")  # the HF face writes the same folder format
    again = transformers.AutoModelForSequenceClassification.from_pretrained(folder / "again")
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits, want.logits)


def test_auto_config_unwraps_to_the_base_family(tmp_path):
    model = PowerBertForSequenceClassification(tiny_distilbert_config(), num_labels=3, mode="hard", retention=[5, 3, 1])
    model.save_pretrained(tmp_path)
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    assert config.model_type == MODEL_TYPE and config.base_config().model_type == "distilbert"
    assert PowerBertForSequenceClassification.from_pretrained(tmp_path).encoder.retention == [5, 3, 1]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # two fresh interpreters importing transformers: ~30 s on a busy 2-core machine
def test_plain_transformers_refuses_and_import_after_transformers_registers(saved_hard):
    _, folder = saved_hard
    load = f"transformers.AutoModelForSequenceClassification.from_pretrained({str(folder)!r})"
    plain = _run(f"import transformers; {load}")
    assert plain.returncode != 0 and f"model type `{MODEL_TYPE}`" in plain.stderr
    late = _run(f"import transformers, lit_efficiency; m = {load}; print(type(m).__name__, m.training)")
    assert late.returncode == 0, late.stderr
    assert late.stdout.split() == ["HFPowerBertForSequenceClassification", "False"]
