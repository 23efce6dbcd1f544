"""Dynamic GNNs over snapshot sequences at scale (Chakaravarthy et al., SC'21).

Pure torch: ``graph.py`` (DynamicGraph), ``adjacency.py`` (edge keys, GCN normalisation), ``codec.py`` (diff
encoding of snapshots), ``nn.py`` (WD-/CD-/TM-GCN, EvolveGCN). Data: ``datasets.py``, ``synthetic.py``,
``datamodule.py``, ``streaming.py``, ``partitioned.py``; distribution: ``partition.py``, ``redistribute.py``;
Lightning: ``task.py``, ``task_distributed.py``, ``profilers.py``.
"""
