"""lit_efficiency: PoWER-BERT inference speedups and scalable dynamic-GNN training on PyTorch Lightning.

Importing the package imports nothing optional (no wandb, transformers, torch_geometric, lightning).
"""

__version__ = "0.1.0"
