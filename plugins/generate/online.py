"""What online objectives (``ppo``, ``reinforce``) share: reward checks, reference log-probs, the
held-out evaluation (reward, KL to the reference, length) and sample logging.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import torch

from alignkit.context import RunContext
from alignkit.errors import ConfigError, TrainingError
from alignkit.logprobs import sequence_logprobs
from alignkit.plugins.ppo.losses import kl_penalty
from alignkit.stats import mean_interval

from .layout import response_mask, select_rows

SAMPLES_FILE = "samples.jsonl"


def sampling_temperature(ctx: RunContext, method: str) -> float:
    """The rollout's sampling temperature; ConfigError if the rollout does not sample."""
    rollout = ctx.cfg.rollout
    if "temperature" not in rollout or "num_samples" not in rollout:
        raise ConfigError(f"method={method} trains on sampled completions; use rollout=generate "
                          f"(rollout={rollout.name} does not sample)")
    return float(rollout.temperature)


def scalar_rewards(batch: dict, ctx: RunContext) -> torch.Tensor:
    """(N,) rewards of a scored batch; a one-line error if the scorer is missing or multi-attribute."""
    if "rewards" not in batch:
        raise ConfigError("online methods need a scorer: pass scorer=function|judge|weighted_sum|... (alignkit ls scorers)")
    rewards = batch["rewards"]
    if rewards.dim() == 2 and rewards.shape[1] == 1:
        rewards = rewards[:, 0]
    if rewards.dim() != 1:
        raise TrainingError(f"scorer '{ctx.cfg.scorer.name}' returned {tuple(rewards.shape)} rewards; online methods "
                            "need one reward per completion (combine attributes with scorer=weighted_sum)")
    return rewards.float()  # (N,)


@torch.no_grad()
def reference_logprobs(ctx: RunContext, batch: dict, temperature: float) -> torch.Tensor:
    """(N, T−1) per-token log-probs of the completion under the frozen initial policy."""
    return sequence_logprobs(ctx.reference(), batch, temperature=temperature).logprobs


def sequence_kl(logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor, estimator: str) -> torch.Tensor:
    """(N, T−1) per-token KL(π‖π_ref) estimates, 0 off the completion (``kl_penalty`` estimator)."""
    return kl_penalty(logps, ref_logps, estimator=estimator) * mask  # (N, T-1)


class OnlineEvaluation:
    """Held-out reward and KL for objectives trained on ``rollout=generate`` batches.

    Subclasses set ``ctx``, ``temperature`` and ``kl_estimator``. Per completion: ``reward`` (the
    scorer's), ``kl`` (Σ_t of the same per-token estimator the method trains with, policy vs
    reference, at the sampling temperature), ``length`` (tokens) and ``ended`` (stopped before the
    cap). The first two completions of each evaluation are logged; all go to ``samples.jsonl``.
    """

    ctx: RunContext
    temperature: float
    kl_estimator: str
    samples_logged: int = 2

    @torch.no_grad()
    def evaluate(self, batch: dict) -> dict[str, torch.Tensor]:
        rewards = scalar_rewards(batch, self.ctx)  # (N,)
        mask = response_mask(batch)  # (N, T-1)
        logps = sequence_logprobs(self.ctx.policy, batch, temperature=self.temperature).logprobs  # (N, T-1)
        ref = reference_logprobs(self.ctx, batch, self.temperature)  # (N, T-1)
        kl = sequence_kl(logps, ref, mask, self.kl_estimator).sum(dim=1)  # (N,)
        self._write_samples(batch, rewards, kl)
        return {"reward": rewards, "kl": kl, "length": mask.sum(dim=1).float(), "ended": batch["ended"].float()}

    def summarize(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        mean, low, high = mean_interval(values["reward"])
        return {"reward": mean, "reward_ci_low": low, "reward_ci_high": high, "kl": float(values["kl"].mean()),
                "length": float(values["length"].mean()), "ended": float(values["ended"].mean()),
                "completions": float(values["reward"].numel())}

    def _write_samples(self, batch: dict, rewards: torch.Tensor, kl: torch.Tensor) -> None:
        if not self.ctx.accelerator.is_main_process:
            return
        round_ = int(batch.get("eval_round", -1))
        first = int(batch["index"][0]) == 0 if "index" in batch else False
        rows = []
        for i, (prompt, completion) in enumerate(zip(batch["prompt_text"], batch["completions"])):
            rows.append({"eval_round": round_, "prompt": prompt, "completion": completion,
                         "reward": float(rewards[i]), "kl": float(kl[i])})
            if first and i < self.samples_logged:
                self.ctx.log(f"sample (eval {round_}) reward={float(rewards[i]):.3f}: {prompt!r} -> {completion!r}")
        with open(self.ctx.run_dir / SAMPLES_FILE, "a") as handle:
            handle.write("".join(json.dumps(r) + "\n" for r in rows))



class PendingUpdates:
    """The micro-batches of the current rollout that are not trained on yet, kept in the checkpoint.

    An objective that turns one rollout into several micro-batches (PPO epochs x minibatches,
    REINFORCE minibatches) plans them all when the rollout arrives and serves them from here. The
    loop asks ``pending_updates()`` first when it (re)starts, so a run resumed from a checkpoint taken
    between two micro-batches of a rollout finishes that rollout before sampling the next one.
    """

    _pending: dict[str, Any] | None = None

    def serve(self, prepared: dict, plan: list[torch.Tensor]) -> Iterator[dict]:
        """Yield ``select_rows(prepared, rows)`` for each ``rows`` of ``plan``, in order."""
        self._pending = {"batch": prepared, "plan": list(plan)}
        yield from self.pending_updates()

    def pending_updates(self) -> Iterator[dict]:
        while self._pending is not None and self._pending["plan"]:
            rows = self._pending["plan"].pop(0)  # popped before yielding: yielded == trained at a checkpoint
            yield select_rows(self._pending["batch"], rows)
        self._pending = None

    def pending_state(self) -> dict[str, Any] | None:
        if self._pending is None or not self._pending["plan"]:
            return None
        batch = {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in self._pending["batch"].items()}
        return {"batch": batch, "plan": [rows.clone() for rows in self._pending["plan"]]}

    def load_pending_state(self, state: dict[str, Any] | None, device: torch.device) -> None:
        if not state:
            self._pending = None
            return
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in state["batch"].items()}
        self._pending = {"batch": batch, "plan": list(state["plan"])}
