"""Hydra configs of ``alignkit.plugins.rollouts.generate`` (found through its ``register_config_dirs`` hook)."""
