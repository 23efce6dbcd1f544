"""RoBERTa and DistilBERT through the one encoder: parity with transformers and a naive hard-mode reference."""

from __future__ import annotations

import pytest
import torch

from lit_efficiency.power_bert.bert import BertEncoder
from lit_efficiency.power_bert.model import PowerBertEncoder, PowerBertForSequenceClassification, flops_per_example
from tests.power_bert.test_bert import TINY_SIZES, padded_batch

transformers = pytest.importorskip("transformers")

ATOL = 1e-5


def tiny_roberta_config(**overrides):
    # padded_batch pads with 0: RoBERTa numbers positions over the non-pad tokens
    config = transformers.RobertaConfig(**{**TINY_SIZES, "pad_token_id": 0, **overrides})
    config._attn_implementation = "eager"
    return config


def tiny_distilbert_config(**overrides):
    kwargs = dict(vocab_size=60, dim=32, n_layers=3, n_heads=4, hidden_dim=48, max_position_embeddings=24)
    kwargs.update(overrides)
    config = transformers.DistilBertConfig(**kwargs)
    config._attn_implementation = "eager"
    return config


FAMILY_CONFIGS = [
    pytest.param(tiny_roberta_config, id="roberta"),
    pytest.param(tiny_distilbert_config, id="distilbert"),
]
HF_BASE = {"roberta": "RobertaModel", "distilbert": "DistilBertModel"}
HF_CLASSIFIER = {"roberta": "RobertaForSequenceClassification", "distilbert": "DistilBertForSequenceClassification"}


def hf_base(config):
    torch.manual_seed(0)
    return getattr(transformers, HF_BASE[config.model_type])(config).eval()


def hf_inputs(config, ids, mask, tt) -> dict:
    """DistilBERT takes no segment ids."""
    inputs = dict(input_ids=ids, attention_mask=mask)
    if config.model_type != "distilbert":
        inputs["token_type_ids"] = tt
    return inputs


@pytest.mark.parametrize("make_config", FAMILY_CONFIGS)
def test_family_state_dict_keys_are_hf_keys(make_config):
    config = make_config()
    hf = hf_base(config)
    ours = BertEncoder(config, add_pooling_layer=config.model_type != "distilbert")
    assert set(ours.state_dict()) == set(hf.state_dict())
    assert ours.load_hf_state_dict(hf.state_dict()) == []


@pytest.mark.parametrize("make_config", FAMILY_CONFIGS)
@pytest.mark.parametrize("mode", ["none", "soft", "hard"])
def test_family_full_retention_matches_hf(make_config, mode):
    config = make_config()
    hf = hf_base(config)
    ids, mask, tt = padded_batch()
    layers = PowerBertEncoder(config).num_layers
    retention = [ids.shape[1]] * layers if mode == "hard" else None
    enc = PowerBertEncoder(config, mode=mode, retention=retention).eval()
    enc.load_hf_state_dict(hf.state_dict())
    with torch.no_grad():
        want = hf(**hf_inputs(config, ids, mask, tt), output_attentions=True)
        got = enc(ids, mask, tt, output_attentions=True)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, atol=ATOL, rtol=0)
    for g, w in zip(got.attentions, want.attentions, strict=True):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=0)
    if config.model_type == "roberta":
        torch.testing.assert_close(got.pooler_output, want.pooler_output, atol=ATOL, rtol=0)


def hf_layers_reference(hf, ids, mask, tt, retention):
    """Naive PoWER-BERT on HF's own layer modules: eager attention, loop score, loop gather, then HF's FFN."""
    config = hf.config
    distil = config.model_type == "distilbert"
    if distil:
        h, layers = hf.embeddings(input_ids=ids), list(hf.transformer.layer)
    else:
        h, layers = hf.embeddings(input_ids=ids, token_type_ids=tt), list(hf.encoder.layer)
    m = mask.clone()
    for j, layer in enumerate(layers):
        bias = (1.0 - m[:, None, None, :].float()) * torch.finfo(torch.float32).min
        if distil:
            sa, probs = layer.attention(h, attention_mask=bias)
            attn_out = layer.sa_layer_norm(sa + h)
        else:
            attn_out, probs = layer.attention(h, bias)
        heads_mean = probs.mean(1)
        rows = []
        for b in range(h.shape[0]):
            sig = [
                (heads_mean[b, :, k].sum() - heads_mean[b, k, k]).item() if m[b, k] else float("-inf")
                for k in range(h.shape[1])
            ]
            others = sorted(range(1, h.shape[1]), key=lambda k, sig=sig: (-sig[k], k))
            rows.append(sorted([0, *others[: min(retention[j], h.shape[1]) - 1]]))
        attn_out = torch.stack([attn_out[b, r] for b, r in enumerate(rows)])
        m = torch.stack([m[b, r] for b, r in enumerate(rows)])
        if distil:
            h = layer.output_layer_norm(layer.ffn(attn_out) + attn_out)
        else:
            h = layer.feed_forward_chunk(attn_out)
    return h, m


@pytest.mark.parametrize("make_config", FAMILY_CONFIGS)
@pytest.mark.parametrize("retention", [[7, 4, 2], [9, 9, 3]], ids=["drop-every-layer", "late-drop"])
def test_family_hard_matches_naive_hf_reference(make_config, retention):
    config = make_config()
    hf = hf_base(config)
    ids, mask, tt = padded_batch()
    enc = PowerBertEncoder(config, mode="hard", retention=retention).eval()
    enc.load_hf_state_dict(hf.state_dict())
    with torch.no_grad():
        want_h, want_m = hf_layers_reference(hf, ids, mask, tt, retention)
        got = enc(ids, mask, tt)
    assert got.last_hidden_state.shape == (3, retention[-1], 32)
    torch.testing.assert_close(got.last_hidden_state, want_h, atol=ATOL, rtol=0)
    assert torch.equal(got.attention_mask, want_m)


@pytest.mark.parametrize("make_config", FAMILY_CONFIGS)
def test_family_classifier_matches_hf_and_roundtrips(make_config, tmp_path):
    config = make_config(num_labels=3)
    torch.manual_seed(0)
    hf = getattr(transformers, HF_CLASSIFIER[config.model_type])(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = PowerBertForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    assert set(ours.state_dict()) == set(hf.state_dict())
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        want = hf(**hf_inputs(config, ids, mask, tt)).logits
        torch.testing.assert_close(ours(ids, mask, tt).logits, want, atol=ATOL, rtol=0)
    ours.encoder.set_mode("hard", [6, 4, 2])
    ours.save_pretrained(tmp_path / "ours")
    again = PowerBertForSequenceClassification.from_pretrained(tmp_path / "ours").eval()
    assert again.encoder.mode == "hard" and again.num_labels == 3 and not again.training  # HF convention: eval
    with torch.no_grad():
        assert torch.equal(again(ids, mask, tt).logits, ours(ids, mask, tt).logits)


def test_distilbert_flops_use_its_ffn_width():
    config = tiny_distilbert_config(n_layers=1, dim=2, n_heads=1, hidden_dim=4)
    # L = 4, D = 2, FFN 4: the hand count of the BERT test (QKV 96, QK^T 64, PV 64, out 32, FFN 128)
    assert flops_per_example(config, None, 4) == 96 + 64 + 64 + 32 + 128
