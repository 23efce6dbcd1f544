"""PoWER-BERT operators and models, each checked against an independent reference (hand values, loops, HF)."""

from __future__ import annotations

import json

import pytest
import torch

from lit_efficiency.core.errors import ConfigError
from lit_efficiency.power_bert.model import (
    PowerBertEncoder,
    PowerBertForSequenceClassification,
    PowerBertModel,
    SoftExtract,
    extract,
    flops_per_example,
    ideal_speedup,
    mass_penalty,
    select_tokens,
    significance_score,
)
from lit_efficiency.power_bert.retention import induce_retention
from tests.power_bert.test_bert import CONFIGS, padded_batch, tiny_albert_config, tiny_bert_config

transformers = pytest.importorskip("transformers")

ATOL = 1e-5


# ---------------------------------------------------------------------- significance score
def hand_probs() -> torch.Tensor:
    """(1, 2, 4, 4); the head mean is [[.5,.25,.25,0], [.5,.25,.25,0], [.5,0,.5,0], [.25,.25,.25,.25]]."""
    head0 = [[0.5, 0.5, 0, 0], [0.25, 0.25, 0.5, 0], [1, 0, 0, 0], [0.25, 0.25, 0.25, 0.25]]
    head1 = [[0.5, 0, 0.5, 0], [0.75, 0.25, 0, 0], [0, 0, 1, 0], [0.25, 0.25, 0.25, 0.25]]
    return torch.tensor([[head0, head1]])


def test_significance_score_hand_case():
    probs = hand_probs()
    # column sums of the head mean: 1.75, .75, 1.25, .25; diagonal: .5, .25, .5, .25
    sig = significance_score(probs, torch.ones(1, 4))
    torch.testing.assert_close(sig, torch.tensor([[1.25, 0.5, 0.75, 0.0]]))
    # token 3 padded: its score is 0, but its query row still counts (reference behaviour)
    masked = significance_score(probs, torch.tensor([[1, 1, 1, 0]]))
    torch.testing.assert_close(masked, torch.tensor([[1.25, 0.5, 0.75, 0.0]]))
    # option: padded query rows do not count either (row 3 adds .25 to each real column)
    no_pad_queries = significance_score(probs, torch.tensor([[1, 1, 1, 0]]), mask_padded_queries=True)
    torch.testing.assert_close(no_pad_queries, torch.tensor([[1.0, 0.25, 0.5, 0.0]]))


def test_significance_score_matches_loop_reference():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 4, 6, 6, generator=gen), dim=-1)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 0]])
    for mask_queries in (False, True):
        want = torch.zeros(3, 6)
        for b in range(3):
            for k in range(6):
                if not mask[b, k]:
                    continue
                total = 0.0
                for q in range(6):
                    if mask_queries and not mask[b, q]:
                        continue
                    if q != k:
                        total += sum(probs[b, h, q, k].item() for h in range(4)) / 4
                want[b, k] = total
        torch.testing.assert_close(significance_score(probs, mask, mask_queries), want)


# ---------------------------------------------------------------------- Soft-Extract
def test_soft_extract_all_ones_is_identity():
    layer = SoftExtract(8)
    hidden = torch.randn(2, 6, 5)
    sig = torch.rand(2, 6)
    assert torch.equal(layer(hidden, sig, torch.ones(2, 6)), hidden)
    assert layer.r.shape == (8,) and torch.all(layer.r == 1)


def test_soft_extract_scales_by_rank_hand_case():
    layer = SoftExtract(5)
    with torch.no_grad():
        layer.r.copy_(torch.tensor([1.0, 0.5, 0.25, 0.0, 0.7]))
    hidden = torch.tensor([[[1.0], [2.0], [3.0], [4.0]]])
    sig = torch.tensor([[0.2, 0.9, 0.5, 0.1]])  # ranks by position: 2, 0, 1, 3
    out = layer(hidden, sig)
    torch.testing.assert_close(out, torch.tensor([[[0.25], [2.0], [1.5], [0.0]]]))
    # gradient: d sum(out) / d r[i] is the token of rank i
    out.sum().backward()
    torch.testing.assert_close(layer.r.grad, torch.tensor([2.0, 3.0, 1.0, 4.0, 0.0]))
    # a padded token ranks last whatever its score: ranks become 1, 3, 0, 2
    padded = layer(hidden, sig, torch.tensor([[1, 0, 1, 1]]))
    torch.testing.assert_close(padded, torch.tensor([[[0.5], [0.0], [3.0], [1.0]]]))


def test_soft_extract_clamp_and_mass():
    layer = SoftExtract(4)
    with torch.no_grad():
        layer.r.copy_(torch.tensor([1.5, 0.5, -0.2, 0.3]))
    assert layer.clamp_() is layer
    assert torch.equal(layer.r.detach(), torch.tensor([1.0, 0.5, 0.0, 0.3]))
    torch.testing.assert_close(layer.mass(), torch.tensor(1.8))


def test_soft_extract_rejects_too_long_input():
    with pytest.raises(ValueError, match="max_seq_len=3"):
        SoftExtract(3)(torch.randn(1, 4, 2), torch.rand(1, 4))


def test_mass_penalty_exact():
    layers = [SoftExtract(4) for _ in range(3)]
    with torch.no_grad():
        layers[0].r.copy_(torch.tensor([1.0, 1.0, 0.5, 0.0]))  # 2.5
        layers[1].r.copy_(torch.tensor([0.5, 0.5, 0.0, 0.0]))  # 1.0
        layers[2].r.fill_(0.25)  # 1.0
    assert mass_penalty(layers).item() == 1 * 2.5 + 2 * 1.0 + 3 * 1.0
    with pytest.raises(ValueError):
        mass_penalty([])


# ---------------------------------------------------------------------- Extract
def extract_loop_reference(hidden, mask, sig, keep):
    """Per-example Python: [CLS], then real tokens by descending score (earlier first on ties), then padding."""
    hs, ms, idxs = [], [], []
    for b in range(hidden.shape[0]):
        seq_len = hidden.shape[1]
        real = sorted((k for k in range(1, seq_len) if mask[b, k]), key=lambda k: (-sig[b, k].item(), k))
        pads = [k for k in range(1, seq_len) if not mask[b, k]]
        chosen = sorted(([0] + real + pads)[: min(keep, seq_len)])
        idxs.append(torch.tensor(chosen))
        hs.append(hidden[b, chosen])
        ms.append(mask[b, chosen])
    return torch.stack(hs), torch.stack(ms), torch.stack(idxs)


@pytest.mark.parametrize("keep", [1, 3, 5, 8, 12])
def test_extract_matches_loop_reference(keep):
    gen = torch.Generator().manual_seed(keep)
    hidden = torch.randn(4, 8, 3, generator=gen)
    sig = torch.rand(4, 8, generator=gen)
    sig[1, 2] = sig[1, 5]  # a tie: the earlier position wins
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [1, 1, 0, 0, 1, 1, 1, 0], [1] + [0] * 7])
    got = extract(hidden, mask, sig, keep)
    want_h, want_m, want_i = extract_loop_reference(hidden, mask, sig, keep)
    assert torch.equal(got.indices, want_i)
    assert torch.equal(got.hidden, want_h)
    assert torch.equal(got.mask, want_m)


def test_extract_eliminates_padding_first_keeps_cls_and_order():
    hidden = torch.arange(6.0).view(1, 6, 1)
    mask = torch.tensor([[1, 1, 1, 0, 0, 1]])
    sig = torch.tensor([[0.0, 0.1, 0.3, 9.0, 9.0, 0.2]])  # padding scores high, [CLS] scores lowest
    got = extract(hidden, mask, sig, keep=3)
    assert got.indices.tolist() == [[0, 2, 5]]  # [CLS] kept, padding gone, order preserved
    assert got.hidden.flatten().tolist() == [0.0, 2.0, 5.0]
    assert got.mask.tolist() == [[1, 1, 1]]
    # more kept slots than real tokens: all real tokens stay, padding fills the rest with mask 0
    more = extract(hidden, mask, sig, keep=5)
    assert more.indices.tolist() == [[0, 1, 2, 3, 5]] and more.mask.tolist() == [[1, 1, 1, 0, 1]]


def test_select_tokens_keep_at_least_length_keeps_all():
    sig, mask = torch.rand(2, 4), torch.ones(2, 4)
    assert select_tokens(sig, mask, 10).tolist() == [[0, 1, 2, 3]] * 2


# ---------------------------------------------------------------------- encoder vs HF
def hf_model(config):
    torch.manual_seed(0)
    cls = transformers.AlbertModel if config.model_type == "albert" else transformers.BertModel
    return cls(config).eval()


def power_from_hf(hf, **kwargs):
    enc = PowerBertEncoder(hf.config, **kwargs).eval()
    enc.load_hf_state_dict(hf.state_dict())
    return enc


@pytest.mark.parametrize("make_config", CONFIGS)
@pytest.mark.parametrize("mode", ["none", "hard", "soft"])
def test_power_bert_full_retention_matches_hf(make_config, mode):
    config = make_config()
    hf = hf_model(config)
    ids, mask, tt = padded_batch()
    layers = PowerBertEncoder(config).num_layers
    retention = [ids.shape[1]] * layers if mode == "hard" else None
    enc = power_from_hf(hf, mode=mode, retention=retention)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=tt, output_attentions=True)
        got = enc(ids, mask, tt, output_attentions=True)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.pooler_output, want.pooler_output, atol=ATOL, rtol=0)
    for g, w in zip(got.attentions, want.attentions, strict=True):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=0)
    assert torch.equal(got.kept_positions, torch.arange(ids.shape[1]).expand(3, -1))


def hf_hard_reference(hf, ids, mask, tt, retention):
    """Naive PoWER-BERT on HF's own modules: full attention sub-layer, loop-based score and gather, then FFN."""
    config = hf.config
    h = hf.embeddings(input_ids=ids, token_type_ids=tt)
    if config.model_type == "albert":
        h = hf.encoder.embedding_hidden_mapping_in(h)
        layers = []
        for i in range(config.num_hidden_layers):
            group = hf.encoder.albert_layer_groups[int(i / (config.num_hidden_layers / config.num_hidden_groups))]
            layers.extend(group.albert_layers)
    else:
        layers = list(hf.encoder.layer)
    m = mask.clone()
    for j, layer in enumerate(layers):
        bias = (1.0 - m[:, None, None, :].float()) * torch.finfo(torch.float32).min
        attn_out, probs = layer.attention(h, bias)
        heads_mean = probs.mean(1)
        sig = torch.zeros(m.shape)
        for b in range(m.shape[0]):
            for k in range(m.shape[1]):
                if m[b, k]:
                    sig[b, k] = heads_mean[b, :, k].sum() - heads_mean[b, k, k]
        attn_out, m, _ = extract_loop_reference(attn_out, m, sig, retention[j])
        if config.model_type == "albert":
            h = layer.full_layer_layer_norm(layer.ff_chunk(attn_out) + attn_out)
        else:
            h = layer.feed_forward_chunk(attn_out)
    return h, m


@pytest.mark.parametrize(
    ("make_config", "retention"),
    [
        pytest.param(tiny_bert_config, [7, 4, 2], id="bert"),
        pytest.param(tiny_bert_config, [9, 9, 3], id="bert-late-drop"),
        pytest.param(tiny_albert_config, [8, 8, 6, 5, 5, 3, 2, 1], id="albert-per-application"),
    ],
)
def test_power_bert_hard_matches_naive_hf_reference(make_config, retention):
    config = make_config()
    hf = hf_model(config)
    ids, mask, tt = padded_batch()
    enc = power_from_hf(hf, mode="hard", retention=retention)
    with torch.no_grad():
        want_h, want_m = hf_hard_reference(hf, ids, mask, tt, retention)
        got = enc(ids, mask, tt)
    assert got.last_hidden_state.shape == (3, retention[-1], config.hidden_size)
    torch.testing.assert_close(got.last_hidden_state, want_h, atol=ATOL, rtol=0)
    assert torch.equal(got.attention_mask, want_m)
    assert torch.all(got.kept_positions[:, 0] == 0)
    assert torch.all(got.kept_positions.diff(dim=1) > 0)  # order preserved
    # the gathered mask is the input mask at the kept positions
    assert torch.equal(got.attention_mask, mask.gather(1, got.kept_positions))


def test_power_bert_hard_scores_only_where_tokens_drop_and_never_materialises_probs(monkeypatch):
    from lit_efficiency.power_bert import model as model_module

    enc = PowerBertEncoder(tiny_bert_config(), mode="hard", retention=[9, 6, 6]).eval()
    calls = {"probs": 0, "scores": 0}
    score_fn = model_module.significance_score_qk

    def probs(*args):
        calls["probs"] += 1
        raise AssertionError("the hard forward must not materialise probabilities")

    def scores(*args):
        calls["scores"] += 1
        return score_fn(*args)

    monkeypatch.setattr(enc, "attention_probs", probs)
    monkeypatch.setattr(model_module, "significance_score_qk", scores)
    ids, mask, tt = padded_batch(seq_len=9)
    with torch.no_grad():
        enc(ids, mask, tt)
    assert calls == {"probs": 0, "scores": 1}  # l_1 = L and l_3 = l_2: no scores needed there
    calls.update(probs=0, scores=0)
    with torch.no_grad():
        enc(ids[:, :5], mask[:, :5], tt[:, :5])  # shorter batch than every l_j: no scores at all
    assert calls == {"probs": 0, "scores": 0}


def test_power_bert_hard_with_short_batch_keeps_everything():
    hf = hf_model(tiny_bert_config())
    enc = power_from_hf(hf, mode="hard", retention=[20, 20, 12])
    ids, mask, tt = padded_batch(seq_len=9)
    with torch.no_grad():
        torch.testing.assert_close(
            enc(ids, mask, tt).last_hidden_state,
            hf(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state,
            atol=ATOL,
            rtol=0,
        )


def test_power_bert_soft_matches_soft_extract_reference():
    """Soft mode equals: HF attention sub-layer, then a per-example rank scaling loop, then HF FFN."""
    hf = hf_model(tiny_bert_config())
    enc = power_from_hf(hf, mode="soft", max_seq_len=12)
    gen = torch.Generator().manual_seed(3)
    for layer in enc.soft_extracts:
        with torch.no_grad():
            layer.r.copy_(torch.rand(12, generator=gen))
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        got = enc(ids, mask, tt).last_hidden_state
        h, m = hf.embeddings(input_ids=ids, token_type_ids=tt), mask
        for j, layer in enumerate(hf.encoder.layer):
            bias = (1.0 - m[:, None, None, :].float()) * torch.finfo(torch.float32).min
            attn_out, probs = layer.attention(h, bias)
            sig = significance_score(probs, m)
            r = enc.soft_extracts[j].r
            scaled = attn_out.clone()
            for b in range(3):
                ranked = sorted(range(9), key=lambda k, b=b: (not m[b, k], -sig[b, k].item(), k))
                for rank, k in enumerate(ranked):
                    scaled[b, k] = attn_out[b, k] * r[rank]
            h = layer.feed_forward_chunk(scaled)
    torch.testing.assert_close(got, h, atol=ATOL, rtol=0)


def test_power_bert_soft_search_step_trains_r_and_induces_retention():
    config = tiny_bert_config()
    enc = PowerBertEncoder(config, mode="soft", max_seq_len=12).train()
    assert len(enc.soft_extracts) == enc.num_layers
    ids, mask, tt = padded_batch()
    out = enc(ids, mask, tt)
    loss = out.pooler_output.pow(2).mean() + 1e-2 * mass_penalty(enc.soft_extracts)
    loss.backward()
    r_grads = [layer.r.grad for layer in enc.soft_extracts]
    assert all(g is not None and torch.all(g[9:] > 0) for g in r_grads)  # unused ranks: only the penalty, j * 1e-2
    torch.testing.assert_close(r_grads[2][9:], torch.full((3,), 3e-2))
    opt = torch.optim.SGD([layer.r for layer in enc.soft_extracts], lr=100.0)
    opt.step()
    enc.clamp_soft_extracts_()
    masses = enc.soft_extract_masses()
    assert all(0.0 <= m <= 12.0 for m in masses)
    retention = induce_retention(masses)
    enc.set_mode("hard", retention)
    assert enc.soft_extracts is None and enc.retention == retention
    assert enc(ids, mask, tt).last_hidden_state.shape[1] == min(retention[-1], 9)


def test_power_bert_albert_has_one_r_per_application():
    enc = PowerBertEncoder(tiny_albert_config(), mode="soft", max_seq_len=10)
    assert enc.num_layers == 8 and len(enc.soft_extracts) == 8
    # 4 outer layers x 2 inner layers = 8 applications of 2 groups x 2 inner layers = 4 distinct weight sets
    assert len({id(enc.layer_parts(j).query) for j in range(8)}) == 4


def test_power_bert_mode_errors():
    config = tiny_bert_config()
    with pytest.raises(ConfigError, match="mode='hard' needs a retention"):
        PowerBertEncoder(config, mode="hard")
    with pytest.raises(ConfigError, match="mode='fast'"):
        PowerBertEncoder(config, mode="fast")
    with pytest.raises(ConfigError, match="has 2 entries, the model has 3 layers"):
        PowerBertEncoder(config, mode="hard", retention=[4, 2])
    with pytest.raises(ConfigError, match="non-increasing"):
        PowerBertEncoder(config, mode="hard", retention=[4, 2, 3])
    with pytest.raises(ValueError, match="max_seq_len=4"):
        PowerBertEncoder(config, mode="soft", max_seq_len=4)(torch.ones(1, 6, dtype=torch.long))
    assert PowerBertModel is PowerBertEncoder


def test_power_bert_hard_runs_in_bfloat16():
    enc = PowerBertEncoder(tiny_bert_config(), mode="hard", retention=[6, 4, 2]).eval().to(torch.bfloat16)
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        out = enc(ids, mask, tt)
    assert out.last_hidden_state.dtype == torch.bfloat16 and torch.isfinite(out.last_hidden_state).all()


# ---------------------------------------------------------------------- sequence classification
def test_classifier_loads_hf_sequence_classification_folder(tmp_path):
    config = tiny_bert_config(num_labels=3)
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(config).eval()
    hf.save_pretrained(tmp_path)
    ours = PowerBertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert ours.num_labels == 3 and ours.encoder.mode == "none"
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(
            ours(ids, mask, tt).logits,
            hf(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits,
            atol=ATOL,
            rtol=0,
        )
    assert set(ours.state_dict()) == set(hf.state_dict())


@pytest.mark.parametrize("make_config", CONFIGS)
def test_classifier_from_base_checkpoint_initialises_head(make_config, tmp_path):
    hf = hf_model(make_config())
    hf.save_pretrained(tmp_path)
    model = PowerBertForSequenceClassification.from_pretrained(tmp_path, num_labels=1).eval()
    assert model.num_labels == 1 and torch.all(model.classifier.bias == 0)
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        out = model(ids, mask, tt)
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=tt)
    assert out.logits.shape == (3, 1)
    torch.testing.assert_close(out.encoder.pooler_output, want.pooler_output, atol=ATOL, rtol=0)
    labels = torch.tensor([0.5, 1.0, -2.0])
    torch.testing.assert_close(model.loss(out.logits, labels), torch.mean((out.logits[:, 0] - labels) ** 2))


@pytest.mark.parametrize("make_config", CONFIGS)
def test_classifier_save_load_roundtrip_hard(make_config, tmp_path):
    config = make_config()
    layers = PowerBertEncoder(config).num_layers
    retention = [max(1, 7 - j) for j in range(layers)]
    torch.manual_seed(0)
    model = PowerBertForSequenceClassification(config, num_labels=4, mode="hard", retention=retention, max_seq_len=16)
    model.eval()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["num_labels"] == 4 and saved["retention"] == retention
    assert saved["power_bert"] == {"mode": "hard", "max_seq_len": 16, "mask_padded_queries": False}
    again = PowerBertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert again.encoder.mode == "hard" and again.encoder.retention == retention and again.num_labels == 4
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        assert torch.equal(again(ids, mask, tt).logits, model(ids, mask, tt).logits)
    # explicit arguments win over the saved ones
    plain = PowerBertForSequenceClassification.from_pretrained(tmp_path, mode="none")
    assert plain.encoder.mode == "none"


def test_classifier_save_load_roundtrip_soft_keeps_r(tmp_path):
    model = PowerBertForSequenceClassification(tiny_bert_config(), num_labels=2, mode="soft", max_seq_len=12).eval()
    with torch.no_grad():
        for layer in model.encoder.soft_extracts:
            layer.r.uniform_()
    model.save_pretrained(tmp_path)
    again = PowerBertForSequenceClassification.from_pretrained(tmp_path).eval()
    assert again.encoder.mode == "soft"
    for a, b in zip(again.encoder.soft_extracts, model.encoder.soft_extracts, strict=True):
        assert torch.equal(a.r, b.r)
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        assert torch.equal(again(ids, mask, tt).logits, model(ids, mask, tt).logits)


def test_classifier_saved_folder_loads_in_hf(tmp_path):
    torch.manual_seed(0)
    model = PowerBertForSequenceClassification(tiny_bert_config(), num_labels=2).eval()
    model.save_pretrained(tmp_path)
    hf = transformers.BertForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(
            hf(input_ids=ids, attention_mask=mask, token_type_ids=tt).logits,
            model(ids, mask, tt).logits,
            atol=ATOL,
            rtol=0,
        )


def test_classifier_cross_entropy_loss():
    model = PowerBertForSequenceClassification(tiny_bert_config(), num_labels=3)
    logits, labels = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    torch.testing.assert_close(model.loss(logits, labels), torch.nn.functional.cross_entropy(logits, labels))


# ---------------------------------------------------------------------- cost model
def test_flops_per_example_hand_count():
    config = transformers.BertConfig(hidden_size=2, intermediate_size=4, num_hidden_layers=1, num_attention_heads=1)
    # L = 4, D = 2, I = 4: QKV 2*4*2*6 = 96, QK^T 2*4*4*2 = 64, then per kept row n_j:
    # PV 2*n_j*4*2, out 2*n_j*2*2, FFN 2*n_j*2*4*2
    assert flops_per_example(config, None, 4) == 96 + 64 + 64 + 32 + 128
    assert flops_per_example(config, [2], 4) == 96 + 64 + 32 + 16 + 64
    assert ideal_speedup(config, [4], 4) == 1.0
    assert ideal_speedup(config, [2], 4) == pytest.approx(384 / 272)


def test_ideal_speedup_reported_rte_configuration():
    """The paper's RTE configuration (N = 256) keeps 868 of 3072 word-vectors; FLOP-ideal is about 3.4-3.5x."""
    retention = [153, 125, 111, 105, 85, 80, 72, 48, 35, 27, 22, 5]
    speedup = ideal_speedup(transformers.BertConfig(), retention, 256)
    assert 3.2 < speedup < 3.6
    with pytest.raises(ConfigError, match="12 layers"):
        flops_per_example(transformers.BertConfig(), retention[:-1], 256)


@pytest.mark.gpu
def test_power_bert_hard_on_cuda_matches_cpu():
    hf = hf_model(tiny_bert_config())
    enc = power_from_hf(hf, mode="hard", retention=[7, 4, 2])
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        want = enc(ids, mask, tt)
        cuda = enc.to("cuda")
        got = cuda(ids.cuda(), mask.cuda(), tt.cuda())
        with torch.autocast("cuda", dtype=torch.float16):
            half = cuda(ids.cuda(), mask.cuda(), tt.cuda())
    torch.testing.assert_close(got.last_hidden_state.cpu(), want.last_hidden_state, atol=1e-4, rtol=0)
    assert torch.equal(got.kept_positions.cpu(), want.kept_positions)
    assert torch.isfinite(half.last_hidden_state).all()


def test_hard_forward_calls_the_tested_extract_in_every_dropping_layer(monkeypatch):
    """One path per value: the encoder's elimination is :func:`extract` itself, not an inlined copy."""
    import lit_efficiency.power_bert.model as model_module

    calls: list[int] = []
    real = model_module.extract

    def spy(hidden, mask, sig, keep):
        calls.append(keep)
        return real(hidden, mask, sig, keep)

    monkeypatch.setattr(model_module, "extract", spy)
    enc = PowerBertEncoder(tiny_bert_config(), mode="hard", retention=[7, 7, 4], max_seq_len=12).eval()
    ids, mask, tt = padded_batch()  # 9 tokens: layer 1 drops to 7, layer 2 keeps them, layer 3 drops to 4
    with torch.no_grad():
        out = enc(ids, mask, tt)
    assert calls == [7, 4] and out.last_hidden_state.shape[1] == 4


def test_retention_reaches_the_model_as_a_list_only(tmp_path):
    """Files are read at the edge (load_retention); the model refuses a path instead of reading it."""
    path = tmp_path / "retention.json"
    path.write_text(json.dumps({"retention": [6, 4, 2]}))
    with pytest.raises(ConfigError, match="expected a list of 3 token counts, got str"):
        PowerBertEncoder(tiny_bert_config(), mode="hard", retention=str(path), max_seq_len=12)
