"""Importing this module quiets torch's C++ logging for the command: ``TORCH_CPP_LOG_LEVEL=FATAL`` unless set.

c10 reads ``TORCH_CPP_LOG_LEVEL`` once, when torch loads, so :mod:`lit_efficiency.cli` imports this module before
anything that imports torch. Without it a rank that cannot reach the rendezvous (``--trainer.num_nodes 2`` on one
node, a wrong ``MASTER_PORT``) prints c10d's socket warnings with a C++ stack dump ("Exception raised from ...",
``frame #0`` ...) before the one-line error; the backend's words stay in that line. The variable is set only when the
user has not (``TORCH_CPP_LOG_LEVEL=WARNING lit-efficiency ...`` brings the C++ logs back for debugging), and the
ranks the launcher starts inherit it.
"""

from __future__ import annotations

import os

#: The level used when the user sets none: only fatal C++ errors are printed.
CPP_LOG_LEVEL = "FATAL"

os.environ.setdefault("TORCH_CPP_LOG_LEVEL", CPP_LOG_LEVEL)
