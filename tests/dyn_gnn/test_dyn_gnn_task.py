"""DynGNNTask and the link-prediction metrics: hand-computed MAP/MRR/AUC, losses, state across blocks, CLI smoke."""

import csv
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lit_efficiency.cli import CONF_DIR, main
from lit_efficiency.core.errors import ConfigError
from lit_efficiency.core.paths import resolve_data_root
from lit_efficiency.core.trainer import quiet_trainer
from lit_efficiency.dyn_gnn.datamodule import SnapshotDataModule, SnapshotTarget
from lit_efficiency.dyn_gnn.metrics import LinkPredictionMetrics
from lit_efficiency.dyn_gnn.nn import MODEL_NAMES, detach_state
from lit_efficiency.dyn_gnn.task import DynGNNTask
from tests.helpers import TINY_GRAPH


def test_link_metrics_match_hand_computed_ranking():
    # Snapshot 0, source 1: ranking by score  [+ 0.9, - 0.5, + 0.3]  -> AP = (1/1 + 2/3) / 2, RR = 1
    # Snapshot 0, source 2: ranking by score  [- 0.8, - 0.7, + 0.1]  -> AP = 1/3,             RR = 1/3
    # Snapshot 1, source 1: ranking by score  [- 0.6, + 0.2]         -> AP = 1/2,             RR = 1/2
    # (the same source id in another snapshot must be its own query)
    expected_map = ((1 + 2 / 3) / 2 + 1 / 3 + 1 / 2) / 3
    expected_mrr = (1 + 1 / 3 + 1 / 2) / 3
    # AUC: positives {0.9, 0.3, 0.1, 0.2} vs negatives {0.5, 0.8, 0.7, 0.6}: only 0.9 beats them (4 of 16 pairs).
    expected_auc = 4 / 16
    metrics = LinkPredictionMetrics()
    metrics.update(
        torch.tensor([0.9, 0.5, 0.3, 0.8, 0.7, 0.1]),
        torch.tensor([1, 0, 1, 0, 0, 1]),
        torch.tensor([1, 1, 1, 2, 2, 2]),
        t=0,
        num_nodes=10,
    )
    metrics.update(torch.tensor([0.2, 0.6]), torch.tensor([1, 0]), torch.tensor([1, 1]), t=1, num_nodes=10)
    out = metrics.compute()
    assert math.isclose(float(out["map"]), expected_map, rel_tol=1e-6)
    assert math.isclose(float(out["mrr"]), expected_mrr, rel_tol=1e-6)
    assert math.isclose(float(out["auc"]), expected_auc, rel_tol=1e-6)
    metrics.reset()
    assert metrics.num_updates == 0
    # Logits may be negative: only the order matters (torchmetrics alone drops positives scored <= 0).
    metrics.update(
        torch.tensor([0.9, 0.5, 0.3, 0.8, 0.7, 0.1]) - 5.0,
        torch.tensor([1, 0, 1, 0, 0, 1]),
        torch.tensor([1, 1, 1, 2, 2, 2]),
        t=0,
        num_nodes=10,
    )
    metrics.update(torch.tensor([0.2, 0.6]) - 5.0, torch.tensor([1, 0]), torch.tensor([1, 1]), t=1, num_nodes=10)
    out = metrics.compute()
    assert math.isclose(float(out["map"]), expected_map, rel_tol=1e-6)
    assert math.isclose(float(out["mrr"]), expected_mrr, rel_tol=1e-6)
    assert math.isclose(float(out["auc"]), expected_auc, rel_tol=1e-6)


def test_link_loss_weights_positives_by_negative_ratio():
    task = DynGNNTask(model="wdgcn", task="link_prediction", num_nodes=5, num_features=0)
    logits = torch.tensor([0.3, -1.0, 2.0, 0.5, -0.2])
    label = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0])
    target = SnapshotTarget(torch.zeros(2, 5, dtype=torch.long), label)
    w = 3 / 2  # 3 negatives, 2 positives
    sig = torch.sigmoid(logits)
    by_hand = -(w * label * torch.log(sig) + (1 - label) * torch.log(1 - sig)).mean()
    torch.testing.assert_close(task.target_loss(logits, target), by_hand)
    unweighted = DynGNNTask(task="link_prediction", num_nodes=5, num_features=0, pos_weight=1.0)
    torch.testing.assert_close(
        unweighted.target_loss(logits, target), F.binary_cross_entropy_with_logits(logits, label)
    )


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_state_carried_across_blocks_equals_one_block(model):
    dm = SnapshotDataModule(**TINY_GRAPH, block_size=3)
    dm.setup("fit")
    task = DynGNNTask(
        model=model,
        hidden_dim=8,
        out_dim=8,
        num_nodes=dm.num_nodes,
        num_features=dm.num_features,
        task="link_prediction",
    )
    whole = dm.store.batch(0, 6, range(0), "train")
    z_whole, _ = task(whole)
    state, parts = None, []
    for t0 in (0, 3):
        z, state = task(dm.store.batch(t0, t0 + 3, range(0), "train"), state)
        state = detach_state(state)  # truncated BPTT does not change the forward values
        parts.append(z)
    torch.testing.assert_close(torch.cat(parts), z_whole, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_loss_decreases_on_synthetic_graph_with_signal():
    L.seed_everything(0)
    dm = SnapshotDataModule(**TINY_GRAPH, num_negatives=5, block_size=4)
    task = DynGNNTask(model="wdgcn", hidden_dim=16, out_dim=16, num_layers=1, head_hidden_dim=16, lr=0.02)
    losses = []

    class Record(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            losses.append(float(trainer.callback_metrics["train/loss_epoch"]))

    trainer = quiet_trainer(max_epochs=8, callbacks=[Record()], num_sanity_val_steps=0, check_val_every_n_epoch=100)
    trainer.fit(task, dm)
    assert losses[-1] < 0.9 * losses[0], losses
    # The state was reset at every epoch start and is detached (truncated BPTT).
    assert all(not s.requires_grad for s in task._train_state)
    metrics = trainer.validate(task, dm, verbose=False)[0]
    assert metrics["val/auc"] > 0.6 and 0.0 < metrics["val/map"] <= 1.0 and 0.0 < metrics["val/mrr"] <= 1.0


@pytest.mark.parametrize(
    ("task_name", "keys"), [("edge_sign", ("acc", "f1", "auc")), ("node_regression", ("mse", "mae"))]
)
def test_edge_sign_and_node_regression_run_one_step(task_name, keys):
    dm = SnapshotDataModule(**TINY_GRAPH, task=task_name)
    task = DynGNNTask(model="cdgcn", hidden_dim=8, out_dim=8)
    trainer = quiet_trainer(fast_dev_run=1)
    trainer.fit(task, dm)
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    for key in keys:
        assert math.isfinite(float(trainer.callback_metrics[f"val/{key}"]))
    out = trainer.test(task, dm, verbose=False)[0]
    assert set(f"test/{k}" for k in keys) <= set(out)


def test_bad_model_name_and_task_mismatch():
    with pytest.raises(ConfigError, match="unknown dynamic GNN 'gcn-lstm'"):
        DynGNNTask(model="gcn-lstm")
    dm = SnapshotDataModule(**TINY_GRAPH, task="node_regression")
    with pytest.raises(ConfigError, match="differs from data.task"):
        quiet_trainer(fast_dev_run=1).fit(DynGNNTask(task="link_prediction"), dm)


@pytest.mark.slow
def test_smoke_fit_through_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = CONF_DIR / "dyn_gnn" / "smoke.yaml"
    main(["fit", "--config", str(config.resolve()), "--trainer.max_epochs=3"])
    metrics = list((tmp_path / "runs/csv").glob("version_*/metrics.csv"))
    assert len(metrics) == 1
    rows = list(csv.DictReader(metrics[0].open()))
    epoch_losses = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    maps = [float(r["val/map"]) for r in rows if r.get("val/map")]
    assert len(epoch_losses) == 3 and epoch_losses[-1] < epoch_losses[0]
    assert len(maps) >= 3 and all(0.0 < m <= 1.0 for m in maps)
    ckpts = list((tmp_path / "runs/smoke/checkpoints").glob("*.ckpt"))  # the run folder runs/<run_name>
    assert any(p.name != "last.ckpt" for p in ckpts)  # the best-val/map checkpoint
    # The checkpoint restores without the data module (num_nodes / num_features / task are in the hparams).
    restored = DynGNNTask.load_from_checkpoint(ckpts[0])
    assert restored.net is not None and restored.hparams.num_nodes == 120


@pytest.mark.slow
@pytest.mark.skipif(resolve_data_root() is None, reason="shared data not found")
def test_real_dataset_fit_with_logger(tmp_path):
    # The loggers merge task and data hparams: the data module's num_nodes must become the real graph's N.
    from lightning.pytorch.loggers import CSVLogger

    dm = SnapshotDataModule(dataset="uci_messages", num_negatives=2, eval_num_negatives=2)
    task = DynGNNTask(model="tmgcn", hidden_dim=8, out_dim=8, num_layers=1, head_hidden_dim=0)
    trainer = quiet_trainer(max_epochs=1, logger=CSVLogger(tmp_path), num_sanity_val_steps=0)
    trainer.fit(task, dm)
    assert task.hparams.num_nodes == dm.hparams.num_nodes == 1899
    assert math.isfinite(float(trainer.callback_metrics["val/map"]))
