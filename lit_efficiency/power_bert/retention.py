"""Retention configurations of PoWER-BERT: how many word-vectors each layer keeps.

A retention configuration is a list ``[l_1, ..., l_n]`` with one entry per layer application (``n`` = number of
encoder layers; ALBERT counts each application of a shared layer), each ``>= 1``, non-increasing, and
``l_1 <= N`` (the padded maximum sequence length). It is induced from the learned Soft-Extract masses at the end of
the configuration search (Goyal et al., ICML 2020, https://arxiv.org/abs/2001.08950, section 3.3), saved as a
JSON artifact, and validated again when the retrain / inference stage loads it.

File format::

    {"retention": [153, 125, 111, ...], "...": "any metadata (task, lambda, source checkpoint)"}

A bare JSON list is accepted on load too.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from lit_efficiency.core.errors import ConfigError
from lit_efficiency.core.paths import atomic_write_text

Rounding = Literal["floor", "ceil", "round"]

_ROUNDERS = {
    "floor": math.floor,  # the reference implementation's int() of a non-negative mass
    "ceil": math.ceil,
    "round": round,  # Python's round: half to even
}


def induce_retention(masses: Sequence[float], rounding: Rounding = "floor") -> list[int]:
    """Turn per-layer Soft-Extract masses ``sum_k r_j[k]`` into a retention configuration.

    .. math::
        l_1 = \\max(1, \\rho(m_1)), \\qquad l_j = \\min(l_{j-1}, \\max(1, \\rho(m_j)))

    where :math:`\\rho` is floor (the reference's ``int()``), ceil or round.

    Args:
        masses: one non-negative mass per layer (floats, or 0-d tensors).
        rounding: ``"floor"`` (reference behaviour), ``"ceil"`` or ``"round"``.

    Returns:
        Non-increasing list of positive ints, one per layer.

    Raises:
        ConfigError: unknown ``rounding``, or a negative / non-finite mass.
    """
    if rounding not in _ROUNDERS:
        raise ConfigError(f"rounding={rounding!r}: choose one of {', '.join(_ROUNDERS)}")
    out: list[int] = []
    for j, mass in enumerate(masses, start=1):
        value = float(mass.detach() if hasattr(mass, "detach") else mass)  # tensors with grad, too
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"soft-extract mass of layer {j} is {value}; masses must be finite and >= 0")
        count = max(1, int(_ROUNDERS[rounding](value)))
        out.append(min(count, out[-1]) if out else count)
    return out


def validate_retention(retention: Any, num_layers: int, max_seq_len: int, source: str = "retention") -> list[int]:
    """Check a retention configuration and return it as ``list[int]``.

    Args:
        retention: the candidate (list / tuple of ints).
        num_layers: number of layer applications the model runs.
        max_seq_len: padded maximum sequence length ``N``.
        source: where it came from (a file name, a config field); starts every error message.

    Raises:
        ConfigError: one line, naming ``source`` and the offending layer, for: not a list, wrong length, a
            non-integer entry, an entry < 1, an increase, or a first entry > ``max_seq_len``.
    """
    if isinstance(retention, (str, bytes)) or not isinstance(retention, Sequence):
        raise ConfigError(f"{source}: expected a list of {num_layers} token counts, got {type(retention).__name__}")
    values = list(retention)
    if len(values) != num_layers:
        raise ConfigError(f"{source}: has {len(values)} entries, the model has {num_layers} layers")
    for j, value in enumerate(values, start=1):
        # bool is an int subclass, and 3.0 is not a count: both are rejected.
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{source}: layer {j} entry {value!r} is not an integer")
        if value < 1:
            raise ConfigError(f"{source}: layer {j} keeps {value} tokens; every layer must keep at least 1 ([CLS])")
        if value > max_seq_len:
            raise ConfigError(f"{source}: layer {j} keeps {value} tokens, more than max_seq_len={max_seq_len}")
        if j > 1 and value > values[j - 2]:
            raise ConfigError(
                f"{source}: layer {j} keeps {value} tokens, more than layer {j - 1} ({values[j - 2]});"
                " retention must be non-increasing"
            )
    return [int(v) for v in values]


def save_retention(path: str | os.PathLike, retention: Sequence[int], overwrite: bool = False, **metadata: Any) -> Path:
    """Write ``{"retention": [...], **metadata}`` as JSON.

    An existing file with identical content is left as is; one with different content is only replaced when
    ``overwrite=True``, so a search run cannot silently clobber the configuration another run is using.

    Args:
        path: target ``.json`` file (parent folders are created).
        retention: the configuration (checked: positive, non-increasing ints).
        overwrite: replace an existing file whose content differs.
        **metadata: JSON-serialisable extra fields (task, lambda, rounding, masses, ...).

    Returns:
        The path written.

    Raises:
        ConfigError: invalid retention, or an existing different file.
    """
    path = Path(path)
    values = validate_retention(list(retention), len(retention), max(retention, default=1), source=str(path))
    payload = {"retention": values, **metadata}
    text = json.dumps(payload, indent=2) + "\n"
    if path.exists() and not overwrite:
        try:
            existing = json.loads(path.read_text())
        except (OSError, ValueError):
            existing = None
        if existing == json.loads(text):
            return path
        raise ConfigError(f"{path}: already exists with different content; pass overwrite=True to replace it")
    return atomic_write_text(path, text)  # a reader never sees half a file; never through a symlink


_INLINE = re.compile(r"^\s*\d+(\s*,\s*\d+)*\s*$")


def load_retention(path_or_list: str | os.PathLike | Sequence[int], num_layers: int, max_seq_len: int) -> list[int]:
    """Load and validate a retention configuration.

    Args:
        path_or_list: a JSON file (``{"retention": [...]}`` or a bare list), an inline list of ints, or a
            comma-separated string such as ``"64,48,32"`` (handy on the command line).
        num_layers: number of layer applications of the model.
        max_seq_len: padded maximum sequence length ``N``.

    Raises:
        ConfigError: missing or malformed file (the message names it), or an invalid configuration.
    """
    if isinstance(path_or_list, (str, os.PathLike)):
        text = os.fspath(path_or_list)
        path = Path(text).expanduser()
        if not path.exists() and _INLINE.match(text):
            return validate_retention(
                [int(x) for x in text.split(",")], num_layers, max_seq_len, source=f"retention {text!r}"
            )
        if not path.is_file():
            raise ConfigError(f"retention file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from err
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: cannot read retention file ({err})") from err
        if isinstance(data, dict):
            if "retention" not in data:
                raise ConfigError(f"{path}: no 'retention' key (expected {{\"retention\": [...]}})")
            data = data["retention"]
        return validate_retention(data, num_layers, max_seq_len, source=str(path))
    return validate_retention(path_or_list, num_layers, max_seq_len, source="retention")
