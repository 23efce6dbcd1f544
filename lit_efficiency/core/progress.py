"""Progress bars with ETA for long phases outside Lightning's loops (tokenisation, timing, encoding).

The bars write to stderr and stay off when stderr is not a terminal (logs, CI, tests) or when the run turned
progress bars off (the Trainer's ``enable_progress_bar``), so only an interactive user sees them.
"""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

#: Seconds a phase must last before its bar is drawn: short phases stay silent.
DELAY_S = 1.0


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "it") -> tqdm:
    """A tqdm bar over ``total`` steps, drawn on stderr after :data:`DELAY_S` seconds.

    Args:
        total: number of ``update(1)`` calls the phase will make.
        desc: what the phase does, shown left of the bar.
        enabled: False turns the bar off (e.g. the Trainer's ``enable_progress_bar``); True still needs stderr to be
            a terminal.
        unit: name of one step.

    Example::

        with progress_bar(len(chunks), "tokenising train") as bar:
            for chunk in chunks:
                work(chunk)
                bar.update()
    """
    show = enabled and sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not show, delay=DELAY_S, leave=False)


def trainer_wants_progress(trainer: Any) -> bool:
    """Whether a Lightning ``Trainer`` shows progress bars (True when there is no trainer)."""
    return trainer is None or getattr(trainer, "progress_bar_callback", None) is not None
