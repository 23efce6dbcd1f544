"""Retention configurations: induction from Soft-Extract masses, validation, JSON artifact."""

from __future__ import annotations

import json

import pytest
import torch

from lit_efficiency.core.errors import ConfigError
from lit_efficiency.power_bert.retention import induce_retention, load_retention, save_retention, validate_retention


def test_induce_retention_floor_zero_and_monotone():
    # floor (the reference's int()), 0 -> 1, then l_j = min(l_j, l_{j-1})
    assert induce_retention([60.9, 61.5, 40.2, 0.3, 12.0, 0.0]) == [60, 60, 40, 1, 1, 1]


@pytest.mark.parametrize(
    ("rounding", "want"),
    [("floor", [3, 2, 2, 1]), ("ceil", [4, 3, 3, 1]), ("round", [4, 2, 2, 1])],
)
def test_induce_retention_rounding_options(rounding, want):
    assert induce_retention([3.5, 2.5, 2.9, 0.2], rounding=rounding) == want


def test_induce_retention_accepts_tensors():
    masses = [torch.tensor(5.7), torch.tensor(2.0, requires_grad=True)]
    assert induce_retention(masses) == [5, 2]
    assert induce_retention(torch.tensor([4.0, 9.0])) == [4, 4]


@pytest.mark.parametrize(("masses", "match"), [([1.0, -0.5], "layer 2 is -0.5"), ([float("nan")], "layer 1 is nan")])
def test_induce_retention_rejects_bad_masses(masses, match):
    with pytest.raises(ConfigError, match=match):
        induce_retention(masses)


def test_induce_retention_rejects_unknown_rounding():
    with pytest.raises(ConfigError, match="rounding='up'"):
        induce_retention([1.0], rounding="up")


def test_validate_retention_accepts_and_normalises():
    assert validate_retention((64, 64, 30), num_layers=3, max_seq_len=64) == [64, 64, 30]
    assert validate_retention([torch.tensor(3).item(), 1], 2, 8) == [3, 1]


@pytest.mark.parametrize(
    ("retention", "match"),
    [
        ([8, 4], r"^cfg: has 2 entries, the model has 3 layers$"),
        ([8, 4, 6], r"^cfg: layer 3 keeps 6 tokens, more than layer 2 \(4\); retention must be non-increasing$"),
        ([80, 4, 2], r"^cfg: layer 1 keeps 80 tokens, more than max_seq_len=64$"),
        ([8, 0, 0], r"^cfg: layer 2 keeps 0 tokens; every layer must keep at least 1 \(\[CLS\]\)$"),
        ([8, -1, -1], r"^cfg: layer 2 keeps -1 tokens"),
        ([8, 4.0, 2], r"^cfg: layer 2 entry 4.0 is not an integer$"),
        ([8, 4.5, 2], r"^cfg: layer 2 entry 4.5 is not an integer$"),
        ([8, "4", 2], r"^cfg: layer 2 entry '4' is not an integer$"),
        ([True, 1, 1], r"^cfg: layer 1 entry True is not an integer$"),
        ("8,4,2", r"^cfg: expected a list of 3 token counts, got str$"),
        (None, r"^cfg: expected a list of 3 token counts, got NoneType$"),
    ],
)
def test_validate_retention_rejects(retention, match):
    with pytest.raises(ConfigError, match=match) as info:
        validate_retention(retention, num_layers=3, max_seq_len=64, source="cfg")
    assert "\n" not in str(info.value)


def test_save_load_retention_roundtrip(tmp_path):
    path = save_retention(tmp_path / "search" / "retention.json", [9, 7, 3], task="rte", lam=1e-3)
    data = json.loads(path.read_text())
    assert data == {"retention": [9, 7, 3], "task": "rte", "lam": 1e-3}
    assert load_retention(path, num_layers=3, max_seq_len=16) == [9, 7, 3]
    assert load_retention(str(path), num_layers=3, max_seq_len=16) == [9, 7, 3]
    assert not (tmp_path / "search" / "retention.json.tmp").exists()


def test_save_retention_does_not_clobber_a_different_file(tmp_path):
    path = tmp_path / "retention.json"
    save_retention(path, [4, 2], task="cola")
    save_retention(path, [4, 2], task="cola")  # identical content: fine
    with pytest.raises(ConfigError, match="already exists with different content; pass overwrite=True"):
        save_retention(path, [4, 1], task="cola")
    assert json.loads(path.read_text())["retention"] == [4, 2]
    save_retention(path, [4, 1], overwrite=True)
    assert json.loads(path.read_text()) == {"retention": [4, 1]}


def test_save_retention_rejects_invalid(tmp_path):
    with pytest.raises(ConfigError, match="non-increasing"):
        save_retention(tmp_path / "r.json", [2, 3])
    assert not (tmp_path / "r.json").exists()


def test_load_retention_validates(tmp_path):
    path = save_retention(tmp_path / "r.json", [20, 10])
    with pytest.raises(ConfigError, match=r"r.json: layer 1 keeps 20 tokens, more than max_seq_len=16"):
        load_retention(path, num_layers=2, max_seq_len=16)
    with pytest.raises(ConfigError, match=r"r.json: has 2 entries, the model has 3 layers"):
        load_retention(path, num_layers=3, max_seq_len=64)


def test_load_retention_malformed_json_names_the_file(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"retention": [3, 2,')
    with pytest.raises(ConfigError, match=r"broken.json: not valid JSON \(line 1"):
        load_retention(bad, num_layers=2, max_seq_len=8)
    other = tmp_path / "other.json"
    other.write_text('{"counts": [3, 2]}')
    with pytest.raises(ConfigError, match=r"other.json: no 'retention' key"):
        load_retention(other, num_layers=2, max_seq_len=8)
    with pytest.raises(ConfigError, match="retention file not found: .*missing.json"):
        load_retention(tmp_path / "missing.json", num_layers=2, max_seq_len=8)


def test_load_retention_other_forms(tmp_path):
    bare = tmp_path / "bare.json"
    bare.write_text("[5, 3, 3]")
    assert load_retention(bare, 3, 8) == [5, 3, 3]
    assert load_retention([5, 3, 3], 3, 8) == [5, 3, 3]
    assert load_retention("5, 3,3", 3, 8) == [5, 3, 3]
    with pytest.raises(ConfigError, match="^retention: layer 2 keeps 4 tokens, more than layer 1"):
        load_retention([3, 4, 1], 3, 8)
