"""Hydra configs of ``alignkit.plugins.sft`` (found through its ``register_config_dirs`` hook)."""
