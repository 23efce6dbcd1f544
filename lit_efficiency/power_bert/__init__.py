"""PoWER-BERT (Goyal et al., ICML 2020): progressive word-vector elimination for faster BERT-family inference.

Pure torch: ``bert.py`` (encoder), ``model.py`` (significance, Soft-Extract, Extract, classifier), ``retention.py``.
Lightning: ``glue.py`` (DataModule), ``task.py`` (fine-tune / search / retrain stages), ``pipeline.py`` (the
``lit-efficiency power-bert`` subcommand). ``tasks_table.py`` holds the GLUE task table and the paper's settings.
"""
