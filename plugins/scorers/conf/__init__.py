"""Hydra configs of ``alignkit.plugins.scorers`` (found through its ``register_config_dirs`` hook)."""
