r"""Metrics of the dynamic-GNN tasks, built on torchmetrics.

Link prediction is scored as in EvolveGCN (Pareja et al., AAAI 2020, https://arxiv.org/abs/1902.10191): every
candidate edge ``(u, v)`` of target snapshot ``t + 1`` (the true edges and the sampled non-edges) gets a score, the
candidates are grouped into one ranking per **source node of that snapshot**, and

.. math::
    \mathrm{AP}(q) = \frac{1}{|P_q|} \sum_{k:\ c_k \in P_q} \mathrm{Precision@}k, \qquad
    \mathrm{MAP} = \frac{1}{|Q|} \sum_q \mathrm{AP}(q), \qquad
    \mathrm{MRR} = \frac{1}{|Q|} \sum_q \frac{1}{\mathrm{rank of the first positive of } q}

over the queries ``Q`` (pairs ``(t, u)``) that hold at least one true edge; AUC is the binary ROC AUC over all
candidates pooled. The query of ``(t, u)`` gets the id ``t * N + u``, so equal source ids of different snapshots
never share a ranking (:func:`query_index`). torchmetrics' ``RetrievalMAP`` / ``RetrievalMRR`` / ``BinaryAUROC``
do the computing; this module only wires them up.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryF1Score
from torchmetrics.retrieval import RetrievalMAP, RetrievalMRR

__all__ = ["LinkPredictionMetrics", "edge_sign_metrics", "node_regression_metrics", "query_index"]


def query_index(source: Tensor, t: int, num_nodes: int) -> Tensor:
    """Ranking-query id of every candidate: ``t * N + source`` (unique per snapshot and source node).

    Args:
        source: ``(E,)`` source node ids of the candidates of target snapshot ``t``.
        t: global index of the snapshot (any consistent convention, e.g. the input snapshot).
        num_nodes: ``N``.

    Shapes:
        source ``(E,)`` -> ``(E,)`` long.
    """
    return source.to(torch.long) + int(t) * int(num_nodes)


class LinkPredictionMetrics(nn.Module):
    """MAP and MRR (per source node and snapshot) and AUC of link-prediction scores.

    Call :meth:`update` once per target snapshot, :meth:`compute` at the end, :meth:`reset` before the next
    evaluation. An ``nn.Module`` so that the metric states follow the LightningModule's device.
    """

    def __init__(self, sync_on_compute: bool = True) -> None:
        """Args: sync_on_compute: let torchmetrics sync states across processes in ``compute`` (see the factories)."""
        super().__init__()
        # Every query built by the data module holds a positive, but skip (rather than count as 0) any that does
        # not, so that a hand-made or filtered candidate set is still scored like EvolveGCN's.
        self.map = RetrievalMAP(empty_target_action="skip", sync_on_compute=sync_on_compute)
        self.mrr = RetrievalMRR(empty_target_action="skip", sync_on_compute=sync_on_compute)
        self.auc = BinaryAUROC(sync_on_compute=sync_on_compute)
        self.num_updates = 0

    def update(self, scores: Tensor, labels: Tensor, source: Tensor, t: int, num_nodes: int) -> None:
        """Add the candidates of one target snapshot.

        Args:
            scores: ``(E,)`` logits (any real score; only the order within a query matters).
            labels: ``(E,)`` 1 for true edges, 0 for sampled non-edges.
            source: ``(E,)`` source node of each candidate.
            t: snapshot index (makes the query ids unique across snapshots).
            num_nodes: ``N``.
        """
        # torchmetrics' retrieval metrics treat a candidate with a score <= 0 as not relevant (they zero its target),
        # so raw logits would lose every positive with a negative logit. The sigmoid keeps the ranking and is > 0;
        # in float64 it underflows to 0 only below a logit of about -745.
        scores = torch.sigmoid(scores.detach().to(torch.float64))
        target = labels.to(torch.long)
        self.map.update(scores, target, indexes=query_index(source, t, num_nodes))
        self.mrr.update(scores, target, indexes=query_index(source, t, num_nodes))
        self.auc.update(scores, target)
        self.num_updates += 1

    def compute(self) -> dict[str, Tensor]:
        """``{"map", "mrr", "auc"}`` over everything added since the last :meth:`reset`."""
        return {"map": self.map.compute(), "mrr": self.mrr.compute(), "auc": self.auc.compute()}

    def reset(self) -> None:
        """Forget all added candidates."""
        self.map.reset()
        self.mrr.reset()
        self.auc.reset()
        self.num_updates = 0


def edge_sign_metrics(sync_on_compute: bool = True) -> MetricCollection:
    """Accuracy, F1 (positive class = positive sign) and AUC of edge-sign probabilities.

    Args:
        sync_on_compute: torchmetrics' own cross-process sync in ``compute``; ``False`` where the caller combines
            the states itself (the snapshot-partitioned task, whose ranks may hold no sample).
    """
    kw = {"sync_on_compute": sync_on_compute}
    return MetricCollection({"acc": BinaryAccuracy(**kw), "f1": BinaryF1Score(**kw), "auc": BinaryAUROC(**kw)})


def node_regression_metrics(sync_on_compute: bool = True) -> MetricCollection:
    """MSE and MAE of node-level predictions (``sync_on_compute`` as :func:`edge_sign_metrics`)."""
    kw = {"sync_on_compute": sync_on_compute}
    return MetricCollection({"mse": MeanSquaredError(**kw), "mae": MeanAbsoluteError(**kw)})
