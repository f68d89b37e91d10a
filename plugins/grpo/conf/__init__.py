"""Hydra configs of ``alignkit.plugins.grpo`` (found through its ``register_config_dirs`` hook)."""
