"""PackedLinear: oneDNN on a packed weight for eager no-grad CPU inference, ``F.linear`` everywhere else."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_efficiency.power_bert.cpu_linear import PackedLinear, onednn_linear_available, use_packed_linears

pytestmark = pytest.mark.skipif(not onednn_linear_available(), reason="this PyTorch build has no oneDNN")


def _packed(in_features=24, out_features=40, bias=True) -> PackedLinear:
    torch.manual_seed(0)
    layer = nn.Linear(in_features, out_features, bias=bias)
    assert use_packed_linears(layer) == 1 and type(layer) is PackedLinear
    return layer.eval()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 24), (3, 7, 24), (1, 1, 24)])
def test_inference_takes_onednn_and_matches_f_linear(shape, bias):
    layer = _packed(bias=bias)
    x = torch.randn(shape)
    with torch.inference_mode():
        got = layer(x)
    assert layer._packed is not None  # the oneDNN path ran
    torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # a gathered, non-contiguous input (the encoder's kept rows)
        strided = torch.randn(3, 14, 24)[:, ::2]
        torch.testing.assert_close(layer(strided), F.linear(strided, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


def test_training_grad_and_other_dtypes_take_f_linear():
    layer = _packed()
    x = torch.randn(4, 24, requires_grad=True)
    layer(x).sum().backward()  # grad enabled: autograd through F.linear
    assert x.grad is not None and layer.weight.grad is not None and layer._packed is None
    with torch.no_grad():
        layer.train()(x)  # training mode
        layer.eval().double()(x.double())  # not fp32
    assert layer._packed is None


def test_weight_changes_are_picked_up():
    layer = _packed()
    x = torch.randn(6, 24)
    with torch.inference_mode():
        layer(x)
    torch.manual_seed(1)
    layer.load_state_dict(nn.Linear(24, 40).state_dict())  # in-place copy: same storage, new version
    with torch.no_grad():
        layer.weight.mul_(2.0)
        got = layer(x)
    torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


def test_packed_copy_is_neither_saved_nor_copied():
    layer = _packed()
    with torch.inference_mode():
        layer(torch.randn(2, 24))
    assert set(layer.state_dict()) == {"weight", "bias"}
    for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert type(twin) is PackedLinear and twin._packed is None
        torch.testing.assert_close(twin.weight, layer.weight)


def test_use_packed_linears_changes_plain_linears_only():
    class Custom(nn.Linear):
        pass

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), Custom(4, 2), nn.Sequential(nn.Linear(2, 2)))
    assert use_packed_linears(model) == 2
    assert [type(m).__name__ for m in model.modules() if isinstance(m, nn.Linear)] == ["PackedLinear", "Custom",
                                                                                       "PackedLinear"]  # fmt: skip
    assert use_packed_linears(model) == 0  # idempotent


def test_weights_made_in_inference_mode_take_f_linear():
    with torch.inference_mode():
        layer = _packed()
        x = torch.randn(2, 24)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    assert layer._packed is None


def test_power_bert_model_uses_it_and_matches_plain_linears():
    from lit_efficiency.power_bert.model import PowerBertForSequenceClassification
    from tests.power_bert.test_bert import padded_batch, tiny_bert_config

    torch.manual_seed(0)
    config = tiny_bert_config()
    model = PowerBertForSequenceClassification(config, num_labels=2, mode="hard", retention=[6, 4, 2]).eval()
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if type(module) is PackedLinear:
            module.__class__ = nn.Linear
    ids, mask, tt = padded_batch()
    with torch.inference_mode():
        got, want = model(ids, mask, tt), plain(ids, mask, tt)
    packed = [m for m in model.modules() if type(m) is PackedLinear]
    assert packed and all(m._packed is not None for m in packed)
    torch.testing.assert_close(got.logits, want.logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(got.encoder.kept_positions, want.encoder.kept_positions)
