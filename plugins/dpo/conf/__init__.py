"""Hydra configs of ``alignkit.plugins.dpo`` (found through its ``register_config_dirs`` hook)."""
