"""Hydra configs of ``alignkit.plugins.ppo`` (found through its ``register_config_dirs`` hook)."""
