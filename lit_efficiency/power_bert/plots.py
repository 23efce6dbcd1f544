"""PNG figures of a PoWER-BERT report: the accuracy/speed trade-off and the retention per layer.

Both take the ``report.json`` dict of the ``power-bert`` pipeline (or a benchmark's list of such reports), so the
pipeline and ``benchmarks/`` draw the same figures. ``matplotlib`` is used without ``pyplot`` (no global state, no
display needed).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TRADEOFF_PNG = "tradeoff.png"
RETENTION_PNG = "retention.png"
#: The files :func:`write_plots` writes into a folder.
PLOTS = (TRADEOFF_PNG, RETENTION_PNG)


def _figure(width: float = 6.4, height: float = 4.4):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110)


def _save(fig: Any, path: Path) -> Path:
    """``fig`` as PNG at ``path``: rendered in memory, then written atomically (never through a symlink)."""
    from lit_efficiency.core.paths import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


def tradeoff_png(report: Mapping[str, Any], path: Path) -> Path:
    """Held-out metric against speedup over the baseline (static padding) for every searched candidate.

    Filled markers: measured speedup; hollow markers at the same height: the FLOP-ideal speedup. The shipped
    candidate is ringed; the baseline's held-out metric is a horizontal line (dashed: baseline minus the budget).
    """
    fig = _figure()
    ax = fig.add_subplot()
    heldout = report["heldout"]
    for c in report["candidates"]:
        chosen = c["name"] == report["chosen"]
        y = c["heldout_metric"]
        ax.scatter([c["speedup"]], [y], color="C0", zorder=3, label="measured" if chosen else None)
        ax.scatter([c["ideal_speedup"]], [y], facecolors="none", edgecolors="C1", zorder=3,
                   label="FLOP-ideal" if chosen else None)  # fmt: skip
        ax.plot([c["speedup"], c["ideal_speedup"]], [y, y], color="0.7", lw=0.8, zorder=1)
        ax.annotate(f"x{c['lambda_multiplier']:g}", (c["speedup"], y), textcoords="offset points", xytext=(4, 4))
        if chosen:
            ax.scatter([c["speedup"]], [y], s=220, facecolors="none", edgecolors="C3", lw=1.6, zorder=4,
                       label="shipped")  # fmt: skip
    ax.axhline(heldout["baseline"], color="0.2", lw=1, label="baseline")
    if report.get("budget") is not None:
        ax.axhline(heldout["baseline"] - report["budget"], color="0.2", lw=1, ls="--", label="baseline - budget")
    ax.axhline(heldout["constant_predictor"], color="C3", lw=0.8, ls=":", label="constant predictor")
    ax.axvline(1.0, color="0.6", lw=0.8)
    ax.set_xlabel(f"speedup over the baseline (static padding to N={report['max_seq_len']}, batch "
                  f"{report['batch_size']})")  # fmt: skip
    ax.set_ylabel(f"held-out {report['metric_name']}")
    ax.set_title(f"PoWER-BERT {report['task']}: LAMBDA multipliers (x of the reference)")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return _save(fig, path)


def retention_png(report: Mapping[str, Any], path: Path) -> Path:
    """Tokens kept per layer by every candidate (the shipped one in colour), with ``N`` as a line."""
    fig = _figure()
    ax = fig.add_subplot()
    candidates = report["candidates"]
    width = 0.8 / len(candidates)
    for k, c in enumerate(candidates):
        layers = range(1, len(c["retention"]) + 1)
        offsets = [j - 0.4 + width * (k + 0.5) for j in layers]
        chosen = c["name"] == report["chosen"]
        ax.bar(offsets, c["retention"], width=width, color="C0" if chosen else "0.75",
               label=f"x{c['lambda_multiplier']:g}" + (" (shipped)" if chosen else ""))  # fmt: skip
    ax.axhline(report["max_seq_len"], color="0.2", lw=1, ls="--", label=f"N = {report['max_seq_len']}")
    ax.set_xlabel("layer")
    ax.set_ylabel("word-vectors kept")
    ax.set_xticks(range(1, len(report["retention"]) + 1))
    ax.set_title(f"PoWER-BERT {report['task']}: retention per layer")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def write_plots(report: Mapping[str, Any], folder: Path) -> list[Path]:
    """Both figures of ``report`` into ``folder``; returns their paths."""
    return [tradeoff_png(report, folder / TRADEOFF_PNG), retention_png(report, folder / RETENTION_PNG)]
