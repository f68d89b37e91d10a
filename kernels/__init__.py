"""Fused token log-prob kernels (Triton) and their torch references."""
