"""Hydra configs of ``alignkit.plugins.reward_model`` (found through its ``register_config_dirs`` hook)."""
