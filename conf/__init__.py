"""The Hydra config tree, reachable as ``pkg://alignkit.conf``."""
