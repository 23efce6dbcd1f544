"""The inference engine: blocked significance score equal to the definition on probabilities; compiled == eager."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from lit_efficiency.core import memory
from lit_efficiency.power_bert import model as model_module
from lit_efficiency.power_bert.bert import additive_attention_mask
from lit_efficiency.power_bert.export import export_program
from lit_efficiency.power_bert.model import (
    PowerBertForSequenceClassification,
    significance_score,
    significance_score_qk,
)
from tests.power_bert.test_bert import padded_batch, tiny_bert_config


def random_mask(bsz: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    """Row 0 full, row 1 right-padded, others random holes; position 0 always real."""
    mask = (torch.rand(bsz, seq_len, generator=gen) > 0.3).long()
    mask[:, 0] = 1
    mask[0] = 1
    mask[1, seq_len // 2 :] = 0
    return mask


@pytest.mark.parametrize("seq_len", [1, 7, 33, 64])
@pytest.mark.parametrize("mask_padded_queries", [False, True])
@pytest.mark.parametrize("block_elements", [1, 97, 1 << 22], ids=["rows-of-1", "odd-blocks", "one-block"])
def test_blocked_score_equals_score_of_materialised_probs(seq_len, mask_padded_queries, block_elements, monkeypatch):
    monkeypatch.setattr(model_module, "SCORE_BLOCK_ELEMENTS", block_elements)
    gen = torch.Generator().manual_seed(seq_len)
    bsz, heads, dim = 3, 4, 8
    q, k = (torch.randn(bsz, heads, seq_len, dim, generator=gen) for _ in range(2))
    mask = random_mask(bsz, seq_len, gen)
    bias = additive_attention_mask(mask, q.dtype)
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim) + bias, dim=-1)
    want = significance_score(probs, mask, mask_padded_queries)
    got = significance_score_qk(q, k, bias, mask, mask_padded_queries)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.all(got[mask == 0] == 0)


def test_blocked_score_runs_on_one_thread_and_restores_the_count(monkeypatch):
    """With 2 intra-op threads the score's block loop runs on one (same value); the caller's count comes back."""
    seen = []
    terms = model_module._score_terms

    def record(*args):
        seen.append(torch.get_num_threads())
        return terms(*args)

    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, 9, 4, generator=gen) for _ in range(2))
    mask = random_mask(2, 9, gen)
    bias = additive_attention_mask(mask, q.dtype)
    # the reference first, at the caller's thread count (it shares _score_terms): only the blocked score is recorded
    want = significance_score(torch.softmax(q @ k.transpose(-1, -2) / 2.0 + bias, dim=-1), mask)
    monkeypatch.setattr(model_module, "_score_terms", record)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = significance_score_qk(q, k, bias, mask)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}
    assert after == 2
    torch.testing.assert_close(got, want)


def test_blocked_score_shares_blocks_among_threads_with_the_same_values(monkeypatch):
    """With 2 intra-op threads and many blocks, a pool thread computes some blocks (on one intra-op thread each)
    and the score is bit-for-bit the one-thread score; a failing block propagates to the caller."""
    monkeypatch.setattr(model_module, "SCORE_BLOCK_ELEMENTS", 64)
    gen = torch.Generator().manual_seed(1)
    q, k = (torch.randn(4, 3, 8, 4, generator=gen) for _ in range(2))
    mask = random_mask(4, 8, gen)
    bias = additive_attention_mask(mask, q.dtype)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        want = significance_score_qk(q, k, bias, mask)
        seen = []
        terms = model_module._score_terms

        def record(*args):
            seen.append((threading.current_thread().name, torch.get_num_threads()))
            return terms(*args)

        monkeypatch.setattr(model_module, "_score_terms", record)
        torch.set_num_threads(2)
        got = significance_score_qk(q, k, bias, mask)
        assert torch.get_num_threads() == 2
        with torch.inference_mode():  # thread-local modes reach the pool threads (in-place writes need them)
            inferred = significance_score_qk(q, k, bias, mask)
        trained = significance_score_qk(q.requires_grad_(), k, bias, mask)
        assert not trained.requires_grad

        def fail(*args):
            raise RuntimeError("block failed")

        monkeypatch.setattr(model_module, "_score_terms", fail)
        with pytest.raises(RuntimeError, match="block failed"):
            significance_score_qk(q, k, bias, mask)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert torch.equal(got, want) and torch.equal(inferred, want) and torch.equal(trained, want)
    names = {name for name, _ in seen}
    assert threading.current_thread().name in names
    assert any(name.startswith("power-bert-score") for name in names)
    assert {threads for _, threads in seen} == {1}


def test_blocked_score_carries_no_gradient():
    q = torch.randn(1, 2, 5, 4, requires_grad=True)
    k = torch.randn(1, 2, 5, 4, requires_grad=True)
    mask = torch.ones(1, 5)
    assert not significance_score_qk(q, k, additive_attention_mask(mask, q.dtype), mask).requires_grad


def _blocks(pairs: int, seq_len: int, traced: bool) -> int:
    rows, pairs_per_block = model_module._score_blocks(pairs, seq_len, traced)
    assert 1 <= rows <= seq_len and pairs_per_block >= 1
    return math.ceil(pairs / pairs_per_block) * math.ceil(seq_len / rows)


@pytest.mark.parametrize(("pairs", "seq_len"), [(128 * 12, 256), (128 * 12, 128), (8 * 12, 4096), (1, 8192)])
def test_traced_score_has_few_blocks_and_eager_keeps_cache_sized_ones(pairs, seq_len):
    """Eager blocks hold at most SCORE_BLOCK_ELEMENTS probabilities; traced ones (unrolled into the graph) about
    TRACED_SCORE_BLOCKS per layer, whatever the batch and length."""
    rows, pairs_per_block = model_module._score_blocks(pairs, seq_len, traced=False)
    assert rows * seq_len * pairs_per_block <= max(model_module.SCORE_BLOCK_ELEMENTS, seq_len)
    assert _blocks(pairs, seq_len, traced=False) > 2 * model_module.TRACED_SCORE_BLOCKS  # the unrolled graph's problem
    assert _blocks(pairs, seq_len, traced=True) <= 2 * model_module.TRACED_SCORE_BLOCKS


def test_traced_score_blocks_equal_eager_on_small_layers():
    assert model_module._score_blocks(12, 64, traced=True) == model_module._score_blocks(12, 64, traced=False)


@pytest.mark.slow  # torch.export traces the whole model: ~10 s
def test_exported_program_unrolls_few_score_blocks_and_matches_eager(monkeypatch):
    """With one-row eager blocks (hundreds per layer here), the exported program still holds about
    TRACED_SCORE_BLOCKS softmaxes per scored layer and gives eager's logits."""
    monkeypatch.setattr(model_module, "SCORE_BLOCK_ELEMENTS", 1)
    torch.manual_seed(0)
    model = PowerBertForSequenceClassification(tiny_bert_config(), num_labels=2, mode="hard", retention=[6, 4, 2])
    ids, mask, tt = padded_batch()
    ids, mask, tt = (t.repeat(8, 1) for t in (ids, mask, tt))  # 24 rows x heads: many pairs
    program = export_program(model, batch_size=24, seq_len=9)
    softmaxes = sum(
        "softmax" in str(node.target)
        for module in program.graph_module.modules()
        if isinstance(module, torch.fx.GraphModule)
        for node in module.graph.nodes
    )
    assert 0 < softmaxes <= 3 * 2 * model_module.TRACED_SCORE_BLOCKS  # 3 scored layers (retention < length)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(ids, mask, tt), model(ids, mask, tt).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("aot_eager", id="aot_eager", marks=pytest.mark.slow),  # tracing: 10-30 s on a busy CPU
        pytest.param("inductor", id="inductor", marks=pytest.mark.slow),  # C++ codegen: minutes on a busy CPU
    ],
)
def test_compiled_hard_model_equals_eager(backend):
    torch.manual_seed(0)
    model = PowerBertForSequenceClassification(tiny_bert_config(), num_labels=2, mode="hard", retention=[6, 4, 2])
    model.train()  # compile_for_inference must switch to eval (dropout off)
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        want = model.eval()(ids, mask, tt)
        model.train().compile_for_inference(backend=backend)  # fullgraph: one graph for the whole forward
        got = model(ids, mask, tt)
    assert not model.training
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.encoder.kept_positions, want.encoder.kept_positions)


@pytest.mark.parametrize("keep", [True, False])
def test_compile_for_inference_keeps_freed_memory_unless_told_not_to(monkeypatch, keep):
    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append("kept") or {})
    model = PowerBertForSequenceClassification(tiny_bert_config(), num_labels=2, mode="hard", retention=[6, 4, 2])
    model.compile_for_inference(backend="eager", keep_freed_memory=keep)
    assert calls == (["kept"] if keep else [])
    ids, mask, tt = padded_batch()
    with torch.inference_mode():  # traced whole (fullgraph): the packed linears step aside for the tracer
        torch.testing.assert_close(model(ids, mask, tt).logits, model.forward(ids, mask, tt).logits)


def test_compiled_model_takes_more_shapes_than_dynamos_default_limit():
    # Each input shape is a graph of its own (dynamic=False); Dynamo's default limit of 8 per code object, with
    # fullgraph=True, would make the ninth shape an error.
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = PowerBertForSequenceClassification(tiny_bert_config(), num_labels=2, mode="hard", retention=[6, 4, 2])
    ids, mask, tt = padded_batch()
    with torch._dynamo.config.patch(recompile_limit=8), torch.inference_mode():  # config.patch: restored after
        model.compile_for_inference(backend="eager", keep_freed_memory=False)
        for rows in (1, 2, 3):
            for length in (7, 8, 9):  # 9 shapes
                batch = (ids[:rows, :length], mask[:rows, :length], tt[:rows, :length])
                torch.testing.assert_close(model(*batch).logits, model.forward(*batch).logits)
        assert torch._dynamo.config.recompile_limit == model_module.SHAPES_PER_PROCESS
