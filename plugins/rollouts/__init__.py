"""Built-in rollouts: where batches come from (``rollout=dataset``, ``rollout=generate``, ``rollout=cai``)."""
