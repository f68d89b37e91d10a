"""Hydra configs of ``alignkit.plugins.rollouts.cai`` (found through its ``register_config_dirs`` hook)."""
