"""alignkit-rl-extras: a median-baseline advantage estimator and a vanilla policy-gradient loss."""
