"""Hydra configs of ``alignkit.plugins.reinforce`` (found through its ``register_config_dirs`` hook)."""
