"""lit_efficiency: PoWER-BERT inference speedups and scalable dynamic-GNN training on PyTorch Lightning.

Importing the package imports nothing optional (no wandb, transformers, torch_geometric, lightning). It does
register PoWER-BERT with ``transformers``' Auto classes, at the moment ``transformers`` itself gets imported
(:mod:`lit_efficiency.power_bert.autoload`).
"""

from lit_efficiency.power_bert.autoload import install as _install_hf_registration

__version__ = "0.1.0"

_install_hf_registration()
