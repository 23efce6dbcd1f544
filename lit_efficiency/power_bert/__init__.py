"""PoWER-BERT (Goyal et al., ICML 2020): progressive word-vector elimination for faster BERT-family inference.

Pure torch: ``bert.py`` (encoder), ``families.py`` (BERT / RoBERTa / ALBERT / DistilBERT layouts), ``model.py``
(significance, Soft-Extract, Extract, classifier), ``retention.py``, ``hf.py`` and ``autoload.py`` (``transformers``
Auto-class registration), ``export.py`` (ONNX / ``torch.export``, the ``power-bert export`` command).
Lightning: ``glue.py`` (DataModule), ``task.py`` (fine-tune / search / retrain stages), ``pipeline.py`` (the
``lit-efficiency power-bert`` subcommand). ``tasks_table.py`` holds the GLUE task table and the paper's settings.
"""
