"""Hydra configs of alignkit-keywords (``pkg://alignkit_keywords.conf``): ``scorer/keywords.yaml``."""
