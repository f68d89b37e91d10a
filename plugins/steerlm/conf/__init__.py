"""Hydra configs of ``alignkit.plugins.steerlm`` (found through its ``register_config_dirs`` hook)."""
