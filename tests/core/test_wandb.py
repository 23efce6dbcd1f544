"""wandb dashboards, checked by reading the offline run back (tests/core/wandb_offline.py)."""

from pathlib import Path

from lit_efficiency.cli import CONF_DIR, main
from lit_efficiency.core.loggers import run_name
from tests.core.wandb_offline import read_offline_run


def test_run_name_comes_from_the_config():
    dyn = {"model": {"class_path": "a.DynGNNTask", "init_args": {"model": "tmgcn"}},
           "data": {"class_path": "b.SnapshotDataModule", "init_args": {"dataset": "chess"}}}  # fmt: skip
    bert = {"model": {"class_path": "a.PowerBertFinetune", "init_args": {"model_name_or_path": "x"}},
            "data": {"class_path": "b.GLUEDataModule", "init_args": {"task": "rte"}}}  # fmt: skip
    assert run_name(dyn) == "DynGNNTask-tmgcn-chess" and run_name(bert) == "PowerBertFinetune-rte"


def test_fit_run_is_named_grouped_and_holds_the_resolved_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(CONF_DIR / "dyn_gnn/streaming_smoke.yaml"), "--config",
          str(CONF_DIR / "logger/wandb.yaml"), "--trainer.max_epochs=2", "--seed_everything=7"])  # fmt: skip
    [run_dir] = Path("runs/wandb").glob("offline-run-*")
    run = read_offline_run(run_dir)
    assert run.name == run.group == "DynGNNTask-wdgcn-synthetic" and run.job_type == "fit"
    cli = run.config["cli"]
    assert cli["seed_everything"] == 7 and cli["trainer"]["max_epochs"] == 2
    assert cli["model"]["class_path"] == "lit_efficiency.dyn_gnn.task.DynGNNTask"
    assert cli["data"]["init_args"]["transfer"] == "diff" and run.config["processes"] == 1
    assert run.config["hidden_dim"] == 16  # the model's hyperparameters, logged by Lightning
    for metric in ("train/loss", "val/map", "train/h2d_bytes"):  # per step and per epoch: <name>_step, <name>_epoch
        assert any(key.startswith(metric) for key in run.history_keys), metric
    # The transfer/compute split: a table, and its values in the summary.
    assert any(a[1] == "run_table" and "transfer_breakdown.table.json" in a[2] for a in run.artifacts)
    parts = {k.split("/")[1] for k in run.summary if k.startswith("transfer_breakdown/") and k.endswith("_share")}
    assert parts == {"h2d_share", "rebuild_share", "compute_share"}
    shares = sum(v for k, v in run.summary.items() if k.startswith("transfer_breakdown/") and k.endswith("_share"))
    assert abs(shares - 1.0) < 1e-6
