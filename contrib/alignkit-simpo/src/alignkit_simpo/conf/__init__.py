"""Hydra configs of alignkit-simpo (``pkg://alignkit_simpo.conf``): ``method/simpo.yaml``."""
