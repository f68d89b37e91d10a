"""alignkit-orpo: ORPO (odds-ratio preference optimisation, Hong et al. 2024) as ``method=orpo``."""

__version__ = "0.1.0"
