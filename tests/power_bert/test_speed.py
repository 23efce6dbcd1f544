"""Timing helpers (:mod:`lit_efficiency.power_bert.speed`): one FLOP-ideal everywhere; ``--timing.compile`` rows."""

from __future__ import annotations

import pytest
import torch
import transformers

from lit_efficiency.cli import CONF_DIR, main
from lit_efficiency.power_bert.model import PowerBertForSequenceClassification, ideal_speedup
from lit_efficiency.power_bert.speed import (
    STATIC_ONLY,
    Workload,
    batches_flops,
    comparisons,
    compiled_twin,
    flop_ideal,
    format_rows,
    logits_of,
    make_workloads,
    time_models,
)
from tests.power_bert.test_bert import tiny_bert_config


def _batch(rows: int, length: int) -> dict[str, torch.Tensor]:
    ids = torch.ones(rows, length, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": ids, "token_type_ids": torch.zeros_like(ids)}


def test_flop_ideal_weights_each_batch_by_its_rows_and_length():
    config = transformers.BertConfig(hidden_size=2, intermediate_size=4, num_hidden_layers=1, num_attention_heads=1)
    # Hand count (see test_flops_per_example_hand_count): L=4 full 384, kept 2 -> 272; L=2 full 160 (nothing to drop).
    batches = [_batch(2, 4), _batch(1, 2)]
    assert batches_flops(config, None, batches) == 2 * 384 + 160
    assert batches_flops(config, [2], batches) == 2 * 272 + 160
    assert flop_ideal(config, [2], batches) == pytest.approx(928 / 704)
    assert Workload("dynamic", batches).flops(config, [2]) == 2 * 272 + 160


def test_flop_ideal_of_static_batches_is_the_per_length_ideal():
    config = transformers.BertConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2)
    static = [_batch(3, 16), _batch(1, 16)]
    assert flop_ideal(config, [5, 1], static) == pytest.approx(ideal_speedup(config, [5, 1], 16))


@pytest.mark.slow  # dynamo traces the tiny model: ~30 s on a busy CPU
def test_compiled_twin_equals_eager_and_gets_static_rows_in_the_timing_table():
    """``--timing.compile``: the compiled copy gives the eager logits and is compared on static padding only."""
    torch.manual_seed(0)
    baseline = PowerBertForSequenceClassification(tiny_bert_config(), num_labels=2, max_seq_len=16).eval()
    pruned = PowerBertForSequenceClassification(
        tiny_bert_config(), num_labels=2, mode="hard", retention=[6, 4, 2], max_seq_len=16
    ).eval()
    pruned.load_state_dict(baseline.state_dict())
    gen = torch.Generator().manual_seed(0)
    features = [{"input_ids": torch.randint(1, 60, (n,), generator=gen).tolist(), "token_type_ids": [0] * n}
                for n in (12, 5, 9, 7)]  # fmt: skip
    workloads = make_workloads(features, 2, 0, 16)
    compiled, diff = compiled_twin(pruned, workloads["static"].batches[0], backend="eager")  # dynamo trace, fast
    assert diff <= 1e-5 and not compiled.training
    with torch.inference_mode():
        batch = workloads["static"].batches[1]
        torch.testing.assert_close(logits_of(compiled, batch), logits_of(pruned, batch))
    models = {"baseline": baseline, "power_bert": pruned, "power_bert_compiled": compiled}
    ms = time_models(models, workloads, torch.device("cpu"), warmup=1, repeats=2, static_only=STATIC_ONLY)
    assert set(ms) == {"baseline/static", "baseline/dynamic", "power_bert/static", "power_bert/dynamic",
                       "power_bert_compiled/static"}  # fmt: skip
    flops = {f"{m}/{p}": w.flops(baseline.config, [6, 4, 2] if m.startswith("power_bert") else None)
             for m in models for p, w in workloads.items()}  # fmt: skip
    rows = comparisons(ms, flops, batch_size=2)
    compiled_rows = [(r["candidate"], r["reference"]) for r in rows if r["candidate"].startswith("power_bert_c")]
    assert compiled_rows == [("power_bert_compiled/static", "baseline/static"),
                             ("power_bert_compiled/static", "baseline/dynamic")]  # fmt: skip
    assert any(line.split()[1] == "power_bert_compiled/static" for line in format_rows(rows))


def test_timing_compile_needs_a_warmup_call(tmp_path, capsys):
    """Each batch size compiles its graph in the warm-up: ``--timing.compile true --timing.warmup 0`` is refused."""
    out = tmp_path / "run"
    smoke = CONF_DIR / "power_bert" / "smoke.yaml"
    args = ["power-bert", "--config", str(smoke), "--output_dir", str(out), "--timing.compile", "true"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--timing.warmup", "0"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("lit-efficiency: error:") == 1 and "timing.warmup" in err
    assert not out.exists()
