"""Export a saved PoWER-BERT classifier as a static-shape ONNX model or a ``torch.export`` program.

A trained retention fixes every tensor shape of the eliminating forward once the batch size and the padded
length are fixed, so the whole model (scores, top-k, gathers included) exports as one static graph that runs
outside Python: ``onnxruntime`` for ONNX (checked against PyTorch right after writing), or
``torch.export.load`` for the ``.pt2`` program.

Command line (``lit-efficiency power-bert export DIR ...``)::

    lit-efficiency power-bert export runs/sst2/model --format onnx --batch_size 1 --seq_len 64

writes ``DIR/onnx/model_b1_l64.onnx`` (or ``DIR/export/model_b1_l64.pt2`` with ``--format torch``); the inputs are
``input_ids``, ``attention_mask`` and ``token_type_ids`` (int64, ``(batch, seq_len)``), the output ``logits``.
ONNX needs the ``onnx`` extra (``pip install 'lit-efficiency[onnx]'``: ``onnx``, ``onnxscript``, ``onnxruntime``).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from lit_efficiency.core.deprecation import REMOVED_IN, LitEfficiencyDeprecationWarning
from lit_efficiency.core.errors import ConfigError, OneLineErrors
from lit_efficiency.power_bert.model import PowerBertForSequenceClassification

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torch")
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

#: Largest ``|ONNX - PyTorch|`` logit difference accepted right after an export (fp32).
ONNX_TOLERANCE = 1e-4


class LogitsOnly(nn.Module):
    """The classifier with positional tensor inputs and one tensor output (what exporters need)."""

    def __init__(self, model: PowerBertForSequenceClassification) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        return self.model(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def example_inputs(model: PowerBertForSequenceClassification, batch_size: int, seq_len: int) -> tuple[Tensor, ...]:
    """Random token ids (``[CLS]`` id 0 aside), an all-ones mask and zero segments of the exported shape."""
    gen = torch.Generator().manual_seed(0)
    vocab = int(model.config.vocab_size)
    input_ids = torch.randint(1, vocab, (batch_size, seq_len), generator=gen)
    return input_ids, torch.ones_like(input_ids), torch.zeros_like(input_ids)


def _check_shape(model: PowerBertForSequenceClassification, batch_size: int, seq_len: int) -> None:
    if batch_size < 1 or seq_len < 1:
        raise ConfigError(f"--batch_size {batch_size} / --seq_len {seq_len}: both must be >= 1")
    limit = int(model.config.max_position_embeddings)
    if seq_len > limit:
        raise ConfigError(f"--seq_len {seq_len} exceeds the model's max_position_embeddings={limit}")


def export_program(
    model: PowerBertForSequenceClassification, batch_size: int, seq_len: int
) -> torch.export.ExportedProgram:
    """``torch.export`` the eval-mode classifier for inputs of shape ``(batch_size, seq_len)`` (static)."""
    _check_shape(model, batch_size, seq_len)
    return torch.export.export(LogitsOnly(model.eval()), example_inputs(model, batch_size, seq_len), strict=False)


def export_onnx(model: PowerBertForSequenceClassification, path: Path, batch_size: int, seq_len: int) -> Path:
    """Write a static-shape ONNX model of the classifier to ``path`` and check it in ``onnxruntime``.

    Raises:
        ConfigError: the ONNX packages are missing, or onnxruntime disagrees with PyTorch.
    """
    try:
        import onnxruntime  # noqa: F401  (checked before the slow export)
        import onnxscript  # noqa: F401  (torch.onnx's exporter)
    except ModuleNotFoundError as err:
        raise ConfigError(f"--format onnx needs the onnx extra: pip install 'lit-efficiency[onnx]' ({err})") from err
    program = export_program(model, batch_size, seq_len)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_program = torch.onnx.export(
        program, input_names=list(INPUT_NAMES), output_names=["logits"], dynamo=True, verbose=False
    )
    onnx_program.save(str(path))
    inputs = example_inputs(model, batch_size, seq_len)
    diff = max_onnx_difference(path, model, inputs)
    if diff > ONNX_TOLERANCE:
        raise ConfigError(f"{path}: onnxruntime logits differ from PyTorch by {diff:.2e} (> {ONNX_TOLERANCE:.0e})")
    log.info("%s: onnxruntime matches PyTorch (max |diff| %.2e)", path, diff)
    return path


def onnx_session(path: Path, threads: int | None = None):
    """An ``onnxruntime`` CPU session for ``path`` (``threads`` intra-op threads; default: onnxruntime's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_onnx_difference(path: Path, model: PowerBertForSequenceClassification, inputs: tuple[Tensor, ...]) -> float:
    """Largest absolute logit difference between ``onnxruntime`` and PyTorch on ``inputs``."""
    session = onnx_session(path)
    got = session.run(["logits"], {name: t.numpy() for name, t in zip(INPUT_NAMES, inputs, strict=True)})[0]
    with torch.no_grad():
        want = LogitsOnly(model.eval())(*inputs)
    return float((torch.from_numpy(got) - want).abs().max())


def export_folder(folder: Path, fmt: str, batch_size: int, seq_len: int | None, output: Path | None = None) -> Path:
    """Export the classifier saved in ``folder``; returns the written file.

    Args:
        folder: a folder written by ``PowerBertForSequenceClassification.save_pretrained``.
        fmt: ``"onnx"`` or ``"torch"`` (a ``torch.export`` ``.pt2`` program).
        batch_size: the static batch size.
        seq_len: the static padded length; default: the model's ``N`` (``power_bert.max_seq_len``).
        output: the file to write; default ``folder/onnx/model_b{B}_l{L}.onnx`` / ``folder/export/....pt2``.

    Raises:
        ConfigError: unknown format, bad shape, a folder that is not a model, or an existing output file.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    model = PowerBertForSequenceClassification.from_pretrained(folder).eval()
    seq_len = int(seq_len if seq_len is not None else model.encoder.max_seq_len)
    _check_shape(model, batch_size, seq_len)
    name = f"model_b{batch_size}_l{seq_len}"
    if output is None:
        output = folder / ("onnx" if fmt == "onnx" else "export") / (name + (".onnx" if fmt == "onnx" else ".pt2"))
    if output.exists():
        raise ConfigError(f"{output} exists: remove it or give another --output")
    if fmt == "onnx":
        return export_onnx(model, output, batch_size, seq_len)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(export_program(model, batch_size, seq_len), str(output))
    return output


#: Option spellings of the first release (argparse style), accepted with a deprecation warning.
DEPRECATED_OPTIONS = {"--batch-size": "--batch_size", "--seq-len": "--seq_len"}


def _current_spelling(argv: list[str]) -> list[str]:
    """``argv`` with :data:`DEPRECATED_OPTIONS` renamed (``--batch-size 3`` and ``--batch-size=3`` alike)."""
    out = []
    for token in argv:
        name, sep, value = token.partition("=")
        if name in DEPRECATED_OPTIONS:
            warnings.warn(
                f"{name} is deprecated, use {DEPRECATED_OPTIONS[name]} (removed in lit_efficiency {REMOVED_IN})",
                LitEfficiencyDeprecationWarning,
                stacklevel=3,
            )
            token = DEPRECATED_OPTIONS[name] + sep + value
        out.append(token)
    return out


def main(argv: list[str]) -> None:
    """``lit-efficiency power-bert export DIR [--format onnx|torch] [--batch_size B] [--seq_len L] [--output F]``.

    Parsed by ``jsonargparse`` like every other command (``--config`` YAML, ``--print_config``, one-line errors).
    """
    from jsonargparse import ActionConfigFile, ArgumentParser
    from jsonargparse.typing import PositiveInt

    class _Parser(OneLineErrors, ArgumentParser):
        """Parse errors as one line."""

    parser = _Parser(
        prog="lit-efficiency power-bert export",
        description="Export a saved PoWER-BERT classifier as a static-shape ONNX model or torch.export program.",
        exit_on_error=True,
    )
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="YAML config; repeat to compose")
    parser.add_argument("folder", type=str, help="the model folder a pipeline run shipped (<output_dir>/model)")
    parser.add_argument(
        "--format", type=Literal["onnx", "torch"], default="onnx", help="onnx (checked in onnxruntime) or torch"
    )
    parser.add_argument("--batch_size", type=PositiveInt, default=1, help="static batch size")
    parser.add_argument("--seq_len", type=PositiveInt | None, default=None, help="static padded length (default: N)")
    parser.add_argument("--output", type=str | None, default=None, help="file to write (default: inside the folder)")
    cfg = parser.parse_args(_current_spelling(argv))
    output = Path(cfg.output) if cfg.output is not None else None
    path = export_folder(Path(cfg.folder), cfg.format, cfg.batch_size, cfg.seq_len, output)
    print(f"wrote {path}")
