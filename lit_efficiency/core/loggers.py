"""Loggers: a Weights & Biases logger that never hangs or crashes without an API key or network."""

from __future__ import annotations

import netrc
import os
import socket
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_info


def _wandb_host() -> str:
    return urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"


def _has_api_key(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _reachable(host: str, timeout_s: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def wandb_offline_reason() -> str | None:
    """Why wandb must run offline (``None`` when online is possible).

    An explicit ``WANDB_MODE`` always wins; otherwise offline when there is no API key (``WANDB_API_KEY`` or a
    ``~/.netrc`` entry from ``wandb login``) or the wandb host cannot be reached within 3 s.
    """
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return f"WANDB_MODE={mode}" if mode in ("offline", "disabled", "dryrun") else None
    host = _wandb_host()
    if not _has_api_key(host):
        return "no wandb API key (set WANDB_API_KEY or run `wandb login`)"
    if not _reachable(host):
        return f"{host} is not reachable"
    return None


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` that switches to offline mode by itself when it cannot log online.

    Offline runs are written under ``<save_dir>/wandb/offline-run-*``; upload them later with ``wandb sync``.

    Args:
        offline: force offline (``True``) or online (``False``); ``None`` decides from the API key and network.
        **kwargs: everything :class:`lightning.pytorch.loggers.WandbLogger` accepts (project, name, save_dir, ...).
    """

    def __init__(self, offline: bool | None = None, **kwargs: Any) -> None:
        if offline is None:
            reason = wandb_offline_reason()
            offline = reason is not None
            if offline:
                rank_zero_info(f"wandb: logging offline ({reason}); upload later with `wandb sync`")
        if offline and os.environ.get("WANDB_MODE") not in ("offline", "disabled", "dryrun"):
            os.environ["WANDB_MODE"] = "offline"
        super().__init__(offline=offline, **kwargs)
