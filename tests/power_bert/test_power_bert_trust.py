"""What makes a PoWER-BERT result trustworthy: interleaved timing with spread against HF SDPA, guard rails,
accuracy-budget choice, train/eval token-selection consistency, and the held-out selection split."""

import pytest
import torch

from lit_efficiency.core.paths import resolve_pretrained
from lit_efficiency.power_bert.guards import (
    choose_candidate,
    collapse_reasons,
    constant_predictor_metric,
    slowdown_reason,
)
from lit_efficiency.power_bert.heldout import REPORT, HeldOutGLUEDataModule
from lit_efficiency.power_bert.model import PowerBertForSequenceClassification, flops_per_example, significance_score
from lit_efficiency.power_bert.speed import comparisons, hf_sdpa_model, logits_of, make_workloads, time_models


@pytest.fixture(scope="module")
def tiny_model() -> str:
    return resolve_pretrained("tiny-random-bert")


def _features(lengths, seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = [101, *torch.randint(1000, 2000, (n - 2,), generator=gen).tolist(), 102]
        out.append({"input_ids": ids, "token_type_ids": [0] * n})
    return out


def _models(tiny_model, tmp_path, mask_padded_queries=True):
    baseline = PowerBertForSequenceClassification.from_pretrained(
        tiny_model, num_labels=2, max_seq_len=16, mask_padded_queries=mask_padded_queries
    ).eval()
    baseline.save_pretrained(tmp_path / "baseline")
    pruned = PowerBertForSequenceClassification.from_pretrained(
        tmp_path / "baseline", mode="hard", retention=[6, 3], max_seq_len=16
    ).eval()
    return baseline, pruned, hf_sdpa_model(str(tmp_path / "baseline"))


def test_workloads_pad_statically_and_dynamically(tiny_model):
    features = _features([12, 5, 9, 7, 3])
    work = make_workloads(features, batch_size=2, pad_token_id=0, max_seq_len=16)
    assert [b["input_ids"].shape for b in work["static"].batches] == [(2, 16), (2, 16), (1, 16)]
    assert [b["input_ids"].shape for b in work["dynamic"].batches] == [(2, 12), (2, 7), (1, 3)]  # sorted by length
    real = sorted(int(n) for b in work["dynamic"].batches for n in b["attention_mask"].sum(1))
    assert real == [3, 5, 7, 9, 12]
    config = PowerBertForSequenceClassification.from_pretrained(tiny_model, num_labels=2).config
    expected = 2 * flops_per_example(config, None, 12) + 2 * flops_per_example(config, None, 7)
    assert work["dynamic"].flops(config, None) == expected + flops_per_example(config, None, 3)


def test_hf_sdpa_baseline_has_the_same_weights(tiny_model, tmp_path):
    """The HF candidate is the baseline's folder loaded by transformers: same logits, static and dynamic padding."""
    baseline, _, hf = _models(tiny_model, tmp_path)
    for work in make_workloads(_features([12, 5, 9, 7]), 4, 0, 16).values():
        batch = work.batches[0]
        with torch.no_grad():
            assert torch.allclose(logits_of(hf, batch), logits_of(baseline, batch), atol=1e-5)


def test_timing_interleaves_models_and_paddings_and_reports_spread(tiny_model, tmp_path):
    """A fake clock advanced by the models themselves: costs per batch are known, so medians and IQRs are exact."""
    baseline, pruned, hf = _models(tiny_model, tmp_path)
    now = {"t": 0.0}
    calls = []
    jitter = iter([0.0, 0.0] + [4.0 * (r % 2) for r in range(100)])  # hf_sdpa: 0 or +4 ms, alternating per call
    costs = {"baseline": lambda: 4.0, "power_bert": lambda: 1.0, "hf_sdpa": lambda: 3.0 + next(jitter)}
    models = {"baseline": baseline, "power_bert": pruned, "hf_sdpa": hf}
    for name, model in models.items():

        def hook(module, args, kwargs, name=name):
            calls.append((name, kwargs["input_ids"].shape[1]))
            now["t"] += costs[name]() * 1e-3

        model.register_forward_pre_hook(hook, with_kwargs=True)
    # 4 examples, batch 2: 2 batches per call; hf_sdpa's jitter alternates per batch (0, 4, 0, 4 ...).
    workloads = make_workloads(_features([12, 5, 9, 7]), 2, 0, 16)
    ms = time_models(models, workloads, torch.device("cpu"), warmup=1, repeats=4, clock=lambda: now["t"])
    order = [name for name, _ in calls[::2]]  # one entry per candidate call (2 batches each)
    assert order[:6] == ["baseline", "baseline", "power_bert", "power_bert", "hf_sdpa", "hf_sdpa"]  # warm-up
    rounds = [order[6 + 6 * r : 12 + 6 * r] for r in range(4)]
    assert [r[0] for r in rounds] == ["baseline", "baseline", "power_bert", "power_bert"]  # rotating start
    assert all(sorted(r) == sorted(order[:6]) for r in rounds)  # every round runs each candidate once
    assert ms["baseline/static"]["median_ms"] == pytest.approx(4.0) and ms["baseline/static"]["iqr_ms"] == 0
    assert ms["power_bert/dynamic"]["median_ms"] == pytest.approx(1.0)
    assert ms["hf_sdpa/static"]["median_ms"] == pytest.approx(5.0)  # (3 + 7) / 2 per batch
    config = baseline.config
    flops = {f"{m}/{p}": w.flops(config, [6, 3] if m == "power_bert" else None)
             for m in models for p, w in workloads.items()}  # fmt: skip
    rows = comparisons(ms, flops, batch_size=2)
    assert len(rows) == 8
    row = next(r for r in rows if r["candidate"] == "power_bert/static" and r["reference"] == "baseline/static")
    assert row["speedup"] == pytest.approx(4.0) and not row["within_noise"]
    assert row["flop_ideal"] == pytest.approx(flops["baseline/static"] / flops["power_bert/static"])
    assert row["percent_of_ideal"] == pytest.approx(100 * 4.0 / row["flop_ideal"])


def test_spread_larger_than_the_difference_is_flagged():
    from lit_efficiency.core.timing import summarize

    ms = {"power_bert/static": summarize([9.0, 10.0, 11.0, 12.0]), "baseline/static": summarize([10.5, 11.0, 11.5]),
          "power_bert/dynamic": summarize([2.0] * 3), "baseline/dynamic": summarize([4.0] * 3)}  # fmt: skip
    flops = dict.fromkeys(ms, 100)
    rows = {(r["candidate"], r["reference"]): r for r in comparisons(ms, flops, 128)}
    assert rows[("power_bert/static", "baseline/static")]["within_noise"]
    assert not rows[("power_bert/dynamic", "baseline/dynamic")]["within_noise"]
    assert "not measurably faster" in slowdown_reason(rows[("power_bert/static", "baseline/static")])
    assert slowdown_reason(rows[("power_bert/dynamic", "baseline/dynamic")]) is None
    slower = {**rows[("power_bert/dynamic", "baseline/dynamic")], "speedup": 0.67, "within_noise": False}
    assert "slower than baseline/dynamic at batch 128 (0.67x" in slowdown_reason(slower)


def test_constant_predictor_metric_by_hand():
    assert constant_predictor_metric("rte", [0, 0, 0, 1]) == pytest.approx(75.0)  # majority share
    assert constant_predictor_metric("mrpc", [1, 1, 0, 0]) == pytest.approx(100 * 2 * 2 / (2 * 2 + 2))  # all "1"
    assert constant_predictor_metric("cola", [1, 0, 1, 1]) == 0.0  # MCC of a constant
    assert constant_predictor_metric("stsb", [0.5, 4.0]) == 0.0


def test_collapsed_search_is_detected():
    """The MRPC failure of the issue: retention 4,1,1,1,1,1, every pair "equivalent" (F1 81.2 = constant)."""
    masses = [4.6, 0.4, 0.2, 0.0, 0.0, 0.0]
    reasons = collapse_reasons(metric=81.2, constant=81.2, baseline_metric=86.0, budget=1.0, masses=masses)
    assert len(reasons) == 2 and "constant predictor" in reasons[0] and "layer(s) 2,3,4,5,6" in reasons[1]
    healthy = collapse_reasons(metric=85.5, constant=81.2, baseline_metric=86.0, budget=1.0, masses=[60, 40, 20])
    assert healthy == []
    assert "nan" in collapse_reasons(float("nan"), constant=0.0, baseline_metric=80.0, budget=1.0, masses=None)[0]
    thin_but_fine = collapse_reasons(metric=85.5, constant=81.2, baseline_metric=86.0, budget=1.0, masses=[9, 0.5])
    assert thin_but_fine == []  # a layer under 1 is fine while the metric holds


def test_budget_choice_is_the_fastest_within_budget():
    candidates = [
        {"heldout_metric": 80.0, "ms": 10.0},
        {"heldout_metric": 79.4, "ms": 6.0},
        {"heldout_metric": 77.0, "ms": 3.0},  # fastest, but 3 points down
        {"heldout_metric": 79.5, "ms": 6.0},  # as fast as #1, more accurate
    ]
    assert choose_candidate(candidates, baseline_metric=80.0, budget=1.0) == 3
    assert choose_candidate(candidates, baseline_metric=80.0, budget=3.0) == 2
    assert choose_candidate(candidates, baseline_metric=90.0, budget=1.0) is None


def test_masked_padded_queries_make_selection_padding_independent(tiny_model):
    """With mask_padded_queries the kept tokens, hence the logits, are those of the unpadded example in any batch."""
    features = _features([12, 7, 5, 9])
    work = make_workloads(features, 4, 0, 16)
    order = sorted(range(4), key=lambda i: -len(features[i]["input_ids"]))
    for mode, retention in (("hard", [6, 3]), ("soft", None)):
        model = PowerBertForSequenceClassification.from_pretrained(
            tiny_model, num_labels=2, mode=mode, retention=retention, max_seq_len=16, mask_padded_queries=True
        ).eval()
        if mode == "soft":
            with torch.no_grad():
                for layer in model.encoder.soft_extracts:
                    layer.r.copy_(torch.linspace(1.0, 0.0, 16))
        with torch.no_grad():
            alone = torch.cat([logits_of(model, make_workloads([f], 1, 0, 16)["dynamic"].batches[0]) for f in features])
            static = logits_of(model, work["static"].batches[0])
            dynamic = logits_of(model, work["dynamic"].batches[0])
        assert torch.allclose(static, alone, atol=1e-5), mode
        assert torch.allclose(dynamic, alone[order], atol=1e-5), mode


def test_padded_query_rows_change_the_score_unless_masked():
    """Why the pipeline masks padded queries: the reference score of a real token depends on the padding."""
    gen = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    scores = torch.randn(1, 2, 6, 6, generator=gen).masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    probs = scores.softmax(-1)
    short = probs[:, :, :4, :4]  # the same example without padding (its rows already ignore padded keys)
    unpadded = significance_score(short, mask[:, :4])
    masked = significance_score(probs, mask, mask_padded_queries=True)[:, :4]
    counted = significance_score(probs, mask, mask_padded_queries=False)[:, :4]
    assert torch.allclose(masked, unpadded, atol=1e-6)
    assert not torch.allclose(counted, unpadded, atol=1e-3)


def test_heldout_split_is_disjoint_from_training_and_dev_is_reported():
    dm = HeldOutGLUEDataModule(
        task="rte", tokenizer_name="tiny-random-bert", max_seq_len=32, train_limit=100, eval_limit=20,
        heldout_fraction=0.2,
    )  # fmt: skip
    dm.setup("fit")
    dm.setup("test")
    train, held = set(dm.datasets["train"]["idx"]), set(dm.datasets["dev"]["idx"])
    assert len(held) == 20 and len(train) == 80 and not train & held
    assert len(dm.datasets[REPORT]) == 20  # GLUE dev, eval_limit applied
    batch = next(iter(dm.test_dataloader()))
    assert "labels" in batch and batch["input_ids"].shape[1] == 32
    with pytest.raises(ValueError, match="heldout_fraction"):
        HeldOutGLUEDataModule(task="rte", heldout_fraction=0.0)
