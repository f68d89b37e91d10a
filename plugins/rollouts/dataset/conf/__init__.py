"""Hydra configs of ``alignkit.plugins.rollouts.dataset`` (found through its ``register_config_dirs`` hook)."""
