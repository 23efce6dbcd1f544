"""Bad input, both systems: exit status 2, ONE ``lit-efficiency: error:`` line naming the file or field, no
traceback, and every file that existed before the command is unchanged (the table is in docs/errors.md).

Each case calls :func:`lit_efficiency.cli.main` in-process (no subprocess per case). A case is
``(id, setup, argv, expected)``: ``setup(tmp)`` writes the files the case needs and returns a dict of names for
the ``{placeholders}`` of ``argv``; ``expected`` (formatted the same way) must appear in the error line.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
from pathlib import Path

import pytest

from lit_efficiency.cli import CONF_DIR, main
from lit_efficiency.core.checkpoint import digest_path, save_checked
from lit_efficiency.power_bert import pipeline

DYN = ["fit", "--config", str(CONF_DIR / "dyn_gnn/smoke.yaml"), "--trainer.default_root_dir={tmp}/runs"]
STAGE = [
    "fit", "--config", str(CONF_DIR / "power_bert/stages/finetune.yaml"), "--trainer.default_root_dir={tmp}/runs",
    "--trainer.accelerator=cpu", "--model.init_args.model_name_or_path=tiny-random-bert",
    "--data.init_args.tokenizer_name=tiny-random-bert", "--data.init_args.task=rte",
    "--model.init_args.export_dir={tmp}/export",
]  # fmt: skip
GLUE = [*STAGE, "--data.init_args.glue_dir={tmp}/glue", "--data.init_args.max_seq_len=32"]
PIPE = ["power-bert", "--config", str(CONF_DIR / "power_bert/smoke.yaml"), "--output_dir={tmp}/out"]
RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"
RTE_ROW = "0\tA man sleeps.\tSomeone sleeps.\tentailment\n"


def _nothing(tmp: Path) -> dict:
    return {}


def _file(name: str, content: str | bytes):
    def setup(tmp: Path) -> dict:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return {}

    return setup


def _rte(train: str | bytes, dev: str | bytes = RTE_HEADER + RTE_ROW):
    """A GLUE folder whose RTE train file is ``train``."""

    def setup(tmp: Path) -> dict:
        _file("glue/RTE/train.tsv", train)(tmp)
        _file("glue/RTE/dev.tsv", dev)(tmp)
        return {}

    return setup


def _run_folder(content: bytes | None, digest: bool, name: str = "smoke"):
    """A previous attempt: ``runs/<name>/checkpoints/last.ckpt`` holding ``content`` (and its digest)."""

    def setup(tmp: Path) -> dict:
        last = tmp / "runs" / name / "checkpoints" / "last.ckpt"
        last.parent.mkdir(parents=True)
        if content is None:
            save_checked({"state_dict": {}}, last)
        else:
            last.write_bytes(content)
        if digest and content is not None:
            import hashlib

            digest_path(last).write_text(f"{hashlib.sha256(content).hexdigest()}  last.ckpt\n")
        if not digest:
            digest_path(last).unlink(missing_ok=True)
        return {}

    return setup


class _Planted:
    """A pickle that creates a file when unpickled without ``weights_only``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _malicious(tmp: Path) -> dict:
    marker = tmp / "pwned"
    payload = pickle.dumps({"state_dict": _Planted(str(marker))})
    return _run_folder(payload, digest=True)(tmp)


def _locked(folder: str):
    def setup(tmp: Path) -> dict:
        path = tmp / folder
        path.mkdir(parents=True, exist_ok=True)
        (path / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
        return {"holder": str(os.getppid())}

    return setup


def _symlinked_checkpoint(tmp: Path) -> dict:
    real = tmp / "elsewhere.ckpt"
    save_checked({"state_dict": {}}, real)
    folder = tmp / "runs" / "smoke" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / "last.ckpt").symlink_to(real)
    return {}


class _Killed(Exception):
    """Stands for a kill -9 of the first attempt."""


def _pipeline_state(relative: str, content: str):
    """An output folder from an earlier attempt (a real pipeline.json) with ``relative`` replaced by ``content``."""

    def setup(tmp: Path) -> dict:
        # The first attempt records pipeline.json (after validating options and data) and dies in its first stage.
        def killed(*args, **kwargs):
            raise _Killed

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(pipeline, "_run_stage", killed)
            with pytest.raises((_Killed, SystemExit)):
                main([a.format(tmp=tmp) for a in PIPE])
        assert (tmp / "out" / "pipeline.json").is_file()
        _file(f"out/{relative}", content)(tmp)
        return {}

    return setup


CASES = [
    # -- dynamic GNN, `fit`: values refused before anything runs
    ("dyn-lr-negative", _nothing, [*DYN, "--model.init_args.lr=-0.01"], "model.init_args.lr"),
    ("dyn-lr-zero", _nothing, [*DYN, "--model.init_args.lr=0"], "model.init_args.lr"),
    ("dyn-hidden-zero", _nothing, [*DYN, "--model.init_args.hidden_dim=0"], "model.init_args.hidden_dim"),
    ("dyn-out-negative", _nothing, [*DYN, "--model.init_args.out_dim=-4"], "model.init_args.out_dim"),
    ("dyn-layers-zero", _nothing, [*DYN, "--model.init_args.num_layers=0"], "model.init_args.num_layers"),
    ("dyn-head-negative", _nothing, [*DYN, "--model.init_args.head_hidden_dim=-1"], "model.init_args.head_hidden_dim"),
    ("dyn-nodes-zero", _nothing, [*DYN, "--data.init_args.num_nodes=0"], "data.init_args.num_nodes"),
    ("dyn-snapshots-negative", _nothing, [*DYN, "--data.init_args.num_snapshots=-1"], "data.init_args.num_snapshots"),
    ("dyn-edges-zero", _nothing, [*DYN, "--data.init_args.edges_per_snapshot=0"], "edges_per_snapshot"),
    ("dyn-block-zero", _nothing, [*DYN, "--data.init_args.block_size=0"], "data.init_args.block_size"),
    ("dyn-communities-zero", _nothing, [*DYN, "--data.init_args.num_communities=0"], "num_communities"),
    ("dyn-max-epochs-zero", _nothing, [*DYN, "--trainer.max_epochs=0"], "trainer.max_epochs"),
    ("dyn-max-epochs-negative", _nothing, [*DYN, "--trainer.max_epochs=-5"], "trainer.max_epochs"),
    ("dyn-max-steps-zero", _nothing, [*DYN, "--trainer.max_steps=0"], "trainer.max_steps"),
    ("dyn-max-steps-negative", _nothing, [*DYN, "--trainer.max_steps=-2"], "trainer.max_steps: must be >= 1"),
    # ConfigErrors raised inside the classes' __init__ (jsonargparse wraps them; the CLI unwraps)
    ("dyn-unknown-model", _nothing, [*DYN, "--model.init_args.model=foo"], "model.model"),
    ("dyn-pos-weight", _nothing, [*DYN, "--model.init_args.pos_weight=-1"], "pos_weight"),
    ("dyn-spatial-block", _nothing, [*DYN, "--model.init_args.spatial_block_size=0"], "spatial_block_size"),
    ("dyn-unknown-dataset", _nothing, [*DYN, "--data.init_args.dataset=nope"], "data.dataset"),
    ("dyn-window-zero", _nothing, [*DYN, "--data.init_args.window=0"], "data.window"),
    ("dyn-negatives-zero", _nothing, [*DYN, "--data.init_args.num_negatives=0"], "num_negatives"),
    # parse errors: one line naming the key
    ("dyn-epochs-not-int", _nothing, [*DYN, "--trainer.max_epochs=abc"], "trainer.max_epochs"),
    ("dyn-unknown-option", _nothing, [*DYN, "--model.init_args.lrr=3"], "lrr"),
    ("dyn-unknown-task", _nothing, [*DYN, "--data.init_args.task=nope"], "task"),
    ("dyn-missing-config", _nothing, ["fit", "--config", "{tmp}/nope.yaml"], "nope.yaml"),
    ("dyn-bad-yaml", _file("bad.yaml", "model: [unclosed\n"), ["fit", "--config", "{tmp}/bad.yaml"], "bad.yaml:2"),
    ("dyn-run-name-path", _nothing, [*DYN, "--run_name=a/b"], "run_name"),
    # run folder, checkpoints, lock
    ("dyn-root-is-file", _file("rootfile", "x"), [*DYN, "--trainer.default_root_dir={tmp}/rootfile"], "rootfile"),
    ("dyn-previous-attempt", _run_folder(None, digest=True), DYN, "--ckpt_path last"),
    ("dyn-ckpt-corrupted", _run_folder(b"not a checkpoint", digest=False), [*DYN, "--ckpt_path=last"], "last.ckpt"),
    ("dyn-ckpt-digest-mismatch", _run_folder(b"bits", digest=False), [*DYN, "--ckpt_path=last"], "no digest file"),
    ("dyn-ckpt-malicious", _malicious, [*DYN, "--ckpt_path=last"], "weights-only"),
    ("dyn-ckpt-missing", _nothing, [*DYN, "--ckpt_path={tmp}/none.ckpt"], "none.ckpt"),
    ("dyn-ckpt-symlink", _symlinked_checkpoint, [*DYN, "--ckpt_path=last"], "symlink"),
    ("dyn-locked", _locked("runs/smoke"), DYN, "pid {holder}"),
    # -- PoWER-BERT stage through `fit`
    ("stage-lr-negative", _nothing, [*STAGE, "--model.init_args.lr=-1e-5"], "model.init_args.lr"),
    ("stage-batch-zero", _nothing, [*STAGE, "--data.init_args.batch_size=0"], "data.init_args.batch_size"),
    ("stage-seq-len-zero", _nothing, [*STAGE, "--data.init_args.max_seq_len=0"], "data.init_args.max_seq_len"),
    ("stage-eval-limit", _nothing, [*STAGE, "--data.init_args.eval_limit=-3"], "data.init_args.eval_limit"),
    ("stage-unknown-task", _nothing, [*STAGE, "--data.init_args.task=nope"], "nope"),
    ("stage-padding", _nothing, [*STAGE, "--data.init_args.padding=weird"], "padding"),
    ("stage-model-path", _nothing, [*STAGE, "--model.init_args.model_name_or_path=./no/such"], "no/such"),
    ("stage-epochs-zero", _nothing, [*STAGE, "--trainer.max_epochs=0"], "trainer.max_epochs"),
    ("stage-workers-negative", _nothing, [*STAGE, "--data.init_args.num_workers=-1"], "num_workers: must be >= 0"),
    # GLUE files (read in setup)
    (
        "glue-dev-cp1252",
        _rte(RTE_HEADER + RTE_ROW, dev=RTE_HEADER.encode() + b"0\t\x93q\x94\tb\tentailment\n"),
        GLUE,
        "dev.tsv:2: not UTF-8",
    ),  # fmt: skip
    ("glue-latin1", _rte((RTE_HEADER + RTE_ROW).encode() + b"1\tcaf\xe9\tx\tentailment\n"), GLUE, "train.tsv:3"),
    ("glue-header-only", _rte(RTE_HEADER), GLUE, "train.tsv: no examples"),
    ("glue-empty", _rte(""), GLUE, "train.tsv:1: empty file"),
    ("glue-field-too-large", _rte(RTE_HEADER + "0\t" + "a" * 200_000 + "\tb\tentailment\n"), GLUE, "train.tsv:2"),
    ("glue-nul-byte", _rte(RTE_HEADER + "0\ta\x00b\tc\tentailment\n"), GLUE, "train.tsv:2"),
    ("glue-columns", _rte(RTE_HEADER + "0\tonly two\n"), GLUE, "train.tsv:2: expected 4"),
    ("glue-label", _rte(RTE_HEADER + "0\ta\tb\tmaybe\n"), GLUE, "train.tsv:2: unknown label"),
    ("glue-missing-column", _rte("index\tsentence1\tlabel\n0\ta\tentailment\n"), GLUE, "'sentence2'"),
    ("glue-dev-header-only", _rte(RTE_HEADER + RTE_ROW, dev=RTE_HEADER), GLUE, "dev.tsv: no examples"),
    ("glue-missing-dev", _file("glue/RTE/train.tsv", RTE_HEADER + RTE_ROW), GLUE, "dev.tsv"),
    ("glue-missing-folder", _nothing, [*STAGE, "--data.init_args.glue_dir={tmp}/none"], "none"),
    # -- PoWER-BERT pipeline
    ("pipe-lr-negative", _nothing, [*PIPE, "--finetune.lr=-1e-3"], "finetune.lr"),
    ("pipe-retention-lr-zero", _nothing, [*PIPE, "--search.retention_lr=0"], "search.retention_lr"),
    ("pipe-epochs-zero", _nothing, [*PIPE, "--retrain.epochs=0"], "retrain.epochs"),
    ("pipe-max-steps-zero", _nothing, [*PIPE, "--finetune.max_steps=0"], "finetune.max_steps"),
    ("pipe-timing-repeats", _nothing, [*PIPE, "--timing.repeats=0"], "timing.repeats"),
    ("pipe-timing-threads", _nothing, [*PIPE, "--timing.threads=0"], "timing.threads: must be >= 1"),
    ("pipe-budget-negative", _nothing, [*PIPE, "--budget=-0.5"], "budget: must be >= 0"),
    ("pipe-patience-zero", _nothing, [*PIPE, "--retrain.patience=0"], "retrain.patience: must be >= 1 (or null)"),
    ("pipe-epochs-not-int", _nothing, [*PIPE, "--finetune.epochs=abc"], "finetune.epochs"),
    ("pipe-unknown-option", _nothing, [*PIPE, "--finetunex.lr=1"], "finetunex"),
    ("pipe-unknown-task", _nothing, [*PIPE, "--task=nope"], "nope"),
    ("pipe-batch-zero", _nothing, [*PIPE, "--data.batch_size=0"], "batch_size"),
    ("pipe-output-is-file", _file("out", "x"), PIPE, "is a file"),
    (
        "pipe-output-under-file",
        _file("f", "x"),
        ["power-bert", "--config", str(CONF_DIR / "power_bert/smoke.yaml"), "--output_dir={tmp}/f/out"],
        "is a file",
    ),  # fmt: skip
    ("pipe-corrupted-config", _file("out/pipeline.json", "{not json"), PIPE, "pipeline.json: corrupted"),
    ("pipe-config-not-object", _file("out/pipeline.json", "[1, 2]"), PIPE, "pipeline.json: corrupted"),
    ("pipe-corrupted-done", _pipeline_state("finetune/done.json", "{oops"), PIPE, "done.json: corrupted"),
    ("pipe-corrupted-last", _pipeline_state("finetune/checkpoints/last.ckpt", "garbage"), PIPE, "last.ckpt"),
    ("pipe-locked", _locked("out"), PIPE, "pid {holder}"),
    ("pipe-no-such-accelerator", _nothing, [*PIPE, "--trainer.accelerator=mps"], "trainer"),
    ("pipe-not-empty", _file("out/precious.txt", "keep"), PIPE, "not empty"),
]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize(("setup", "argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(setup, argv, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    names = {"tmp": tmp_path, **setup(tmp_path)}
    before = _snapshot(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([a.format(**names) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lit-efficiency: error:")]
    assert exc.value.code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expected.format(**names) in lines[0], lines[0]
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before, "a pre-existing file was changed"
    assert not (tmp_path / "pwned").exists(), "a checkpoint ran code"


def test_value_checks_share_one_wording():
    """The CLI, the pipeline and the GLUE data module word a bad value the same way (``core/checks.py``)."""
    from lit_efficiency.core.checks import check_at_least, check_limit, check_positive
    from lit_efficiency.core.errors import ConfigError

    for check, args, message in (
        (check_positive, ("x.lr", -1e-3), "x.lr: must be > 0, got -0.001"),
        (check_positive, ("x.lr", float("nan")), "x.lr: must be > 0, got nan"),
        (check_at_least, ("x.n", 0, 1, "or null"), "x.n: must be >= 1 (or null), got 0"),
        (check_limit, ("x.max_epochs", 0), "x.max_epochs: must be >= 1 (or -1: no limit), got 0"),
        (check_limit, ("x.max_epochs", -3), "x.max_epochs: must be >= 1 (or -1: no limit), got -3"),
    ):
        with pytest.raises(ConfigError) as exc:
            check(*args)
        assert str(exc.value) == message
    for check, args in ((check_positive, ("a", None)), (check_limit, ("b", -1)), (check_at_least, ("c", True, 2))):
        check(*args)  # unset, no limit, not a number: the parser's business


def test_there_are_at_least_60_cases():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)
