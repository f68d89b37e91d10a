"""The one generic training loop: rollout -> score -> update, for every method.

Offline methods are the same loop with a dataset rollout and no scorer. Per optimizer step the loop
draws ``trainer.grad_accum`` micro-batches from the *update stream* (each rollout batch, scored, and
served as the micro-batches of the objective's :class:`~alignkit.interfaces.UpdatePlan` when it plans
updates), scales each loss term by the micro-batch's share of that term's units over the global batch
(``Objective.weight``, :mod:`alignkit.interfaces`), clips, steps, logs, evaluates and checkpoints.
Building the run: :mod:`alignkit.run`; its state on disk: :mod:`alignkit.run_state`."""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import DictConfig

from . import checkpoint as ckpt
from . import distributed, probe, run_state
from .batches import batch_from_state, batch_state
from .errors import TrainingError
from .interfaces import CountsEvalBatches, FillsBatches, ListsExamples, ReportsStats, UpdatePlan, units_by_term
from .metrics import format_metrics, to_float
from .run import Run, build_run
from .run_state import RunResult
from .runfolder import prepare
from .scoring import checked_rewards
from .step_metrics import StepMetrics

__all__ = ["Trainer", "RunResult", "train", "format_metrics", "eval_batch_count"]


def eval_batch_count(rollout: Any, eval_batch_size: int) -> int | None:
    """How many batches ``rollout.eval_batches()`` yields: the evaluation bar's total (None: unknown).

    A rollout that counts them says so (:class:`~alignkit.interfaces.CountsEvalBatches`); otherwise one
    that knows its held-out examples (:class:`~alignkit.interfaces.ListsExamples`, or a ``held_out``
    list) is taken to serve them in batches of its ``eval_batch_size`` (``eval_batch_size`` when it has
    none of its own), as the built-in rollouts do.
    """
    if isinstance(rollout, CountsEvalBatches):
        return int(rollout.num_eval_batches())
    if isinstance(rollout, ListsExamples):
        examples = rollout.num_examples("eval")
    elif isinstance(getattr(rollout, "held_out", None), (list, tuple)):
        examples = len(rollout.held_out)
    else:
        return None
    size = int(getattr(rollout, "eval_batch_size", None) or eval_batch_size)
    return math.ceil(examples / size) if size > 0 else None


class Trainer:
    """Trains the run ``cfg`` describes into ``run_dir``: ``Trainer(cfg, run_dir).fit()``."""

    def __init__(self, cfg: DictConfig, run_dir: Path) -> None:
        self.run: Run = build_run(cfg, run_dir)
        self.cfg, self.run_dir = cfg, self.run.run_dir
        self.objective, self.policy, self.rollout = self.run.objective, self.run.policy, self.run.rollout
        self.step = 0
        self.pending: UpdatePlan | None = None  # micro-batches of the current rollout not trained on yet
        self.probe = (probe.AnswerProbe(cfg, self.run.tokenizer, self.run.ctx.registry, self.run.accelerator)
                      if cfg.get("probe") and cfg.probe.prompts else None)

    # ------------------------------------------------------------------ the update stream
    def _score(self, batch: Any) -> Any:
        if self.run.scorer is None or batch.rewards is not None:
            return batch
        return batch.with_rewards(checked_rewards(self.run.scorer(batch), batch, self.cfg.scorer.name))

    def _sample(self) -> Any:
        return self._score(self.rollout.next_batch(self.policy).to(self.run.accelerator.device))

    def _update_stream(self) -> Iterator[Any]:
        """Scored rollout batches, or the micro-batches of each one's update plan."""
        plans = self.run.caps.plans_updates
        while True:
            # A plan's rows are popped before their micro-batch is yielded: at a checkpoint, what is
            # left in ``pending`` is exactly what the uninterrupted run trains next.
            if self.pending is not None and self.pending.rows:
                yield self.pending.batch.select(self.pending.rows.pop(0))
                continue
            self.pending = None
            batch = self._sample()
            if isinstance(self.rollout, FillsBatches):  # e.g. dynamic sampling: more until the batch has signal
                batch = self.rollout.fill(batch, self._sample)
            if plans is None:
                yield batch
            else:
                plan = plans.updates(batch)
                self.pending = UpdatePlan(plan.batch, list(plan.rows))

    # ------------------------------------------------------------------ one optimizer step
    def _train_step(self, stream: Iterator[Any]) -> dict[str, float]:
        accelerator, accum = self.run.accelerator, self.cfg.trainer.grad_accum
        micro = [next(stream) for _ in range(accum)]
        units = [units_by_term(self.objective.weight(b)) for b in micro]
        shares = distributed.term_shares(units, accelerator)  # per micro-batch: term -> N * u / U (global)
        logged = StepMetrics(accelerator.num_processes)
        for index, (batch, share) in enumerate(zip(micro, shares)):
            sync = index == accum - 1
            with accelerator.no_sync(self.policy) if not sync else contextlib.nullcontext():
                out = self.objective(batch)
                parts = out.parts()
                self._check_terms(parts, share)
                loss = sum(part.coef * part.value * share[key] for key, part in parts.items())
                run_state.check_finite(loss.detach(), self.step + 1, self.run_dir, self.run.accelerator)
                accelerator.backward(loss)
            for key, part in parts.items():
                logged.add("loss", part.coef * part.value.detach(), share[key])
                if len(parts) > 1:
                    logged.add(key, part.value.detach(), share[key])
            first = share[next(iter(parts))]
            for key, value in out.metrics.items():
                logged.add(key, value, first)
        sums = logged.result(accelerator)
        distributed.average_gradients(self.run.loose, accelerator)
        if self.cfg.trainer.max_grad_norm > 0:
            # Every optimised tensor, not only the policy's: value and reward heads are clipped too.
            params = [p for group in self.run.optimizer.param_groups for p in group["params"]]
            sums["grad_norm"] = to_float(accelerator.clip_grad_norm_(params, self.cfg.trainer.max_grad_norm))
        sums["lr"] = self.run.scheduler.get_last_lr()[0]
        sums.update(self._pop_stats())
        self.run.optimizer.step()
        self.run.scheduler.step()
        self.run.optimizer.zero_grad(set_to_none=True)
        return sums

    def _check_terms(self, parts: dict[str, Any], share: dict[str, float]) -> None:
        if parts.keys() != share.keys():
            raise TrainingError(f"method '{self.cfg.method.name}': the loss has terms {sorted(parts)} but weight() "
                                f"gave units for {sorted(share)}; they must name the same terms")

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out metrics: the objective's per-example values over every eval batch, summarized."""
        evaluates = self.run.caps.evaluates
        if evaluates is None:
            return {}
        self.policy.eval()
        values: dict[str, list[torch.Tensor]] = {}
        try:
            total = eval_batch_count(self.rollout, int(self.cfg.trainer.eval_batch_size))
            for batch in self._progress(self.rollout.eval_batches(), desc="eval", total=total, unit="batch",
                                        leave=False):
                batch = self._score(batch.to(self.run.accelerator.device))
                for key, value in evaluates.evaluate(batch).items():
                    values.setdefault(key, []).append(value.detach().float().reshape(-1).cpu())
        finally:
            self.policy.train()
        counts = self._pop_stats()  # the evaluation's own (checker calls, time): not the next step's
        if not values:
            return {}
        summary = evaluates.summarize({k: torch.cat(v) for k, v in values.items()})
        return {**{k: float(v) for k, v in summary.items()}, **counts}

    @torch.no_grad()
    def _probe(self, label: str) -> probe.ProbeResult | None:
        """The answer probe (``probe=...``): answers written to ``<run>/probe/<label>.jsonl``, measures logged."""
        if self.probe is None:
            return None
        self.policy.eval()
        try:
            result = self.probe(self.policy, progress=self._progress)
        finally:
            self.policy.train()
        if self.run.is_main:
            probe.write(self.run_dir, label, result)
            self.run.metrics.log(self.step, result.summary, split="probe")
        return result

    def _pop_stats(self) -> dict[str, float]:
        """Counts since the last call from the rollout and the scorer (checker time-outs, refills, ...)."""
        sources = [s for s in (self.rollout, self.run.scorer) if isinstance(s, ReportsStats)]
        return {k: v for s in sources for k, v in distributed.reduce_metrics(s.pop_stats(), self.run.accelerator).items()}

    def _progress(self, iterable: Any, **kwargs: Any) -> Any:
        if not (self.run.is_main and self.cfg.trainer.progress):
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, dynamic_ncols=True, **kwargs)

    # ------------------------------------------------------------------ checkpoints
    def _save(self) -> None:
        self.run.accelerator.wait_for_everyone()
        if not self.run.is_main:
            return
        caps = self.run.caps
        pending = None
        if self.pending is not None and self.pending.rows:
            pending = {"batch": batch_state(self.pending.batch), "rows": [r.clone() for r in self.pending.rows]}
        state = {"optimizer": self.run.optimizer.state_dict(), "scheduler": self.run.scheduler.state_dict(),
                 "rollout": self.rollout.state_dict(), "pending": pending}
        if caps.stateful is not None:
            state["objective"] = caps.stateful.state_dict()
        run_state.save(self.run_dir, self.cfg, self.step, self.run.accelerator.unwrap_model(self.policy),
                       self.run.tokenizer, state, caps.saves_extras.save_extras if caps.saves_extras else None)

    def _restore(self) -> None:
        resume = self.run.resume
        state = ckpt.load_state(resume.checkpoint)
        self.run.optimizer.load_state_dict(state["optimizer"])
        self.run.scheduler.load_state_dict(state["scheduler"])
        self.rollout.load_state_dict(state["rollout"])
        if self.run.caps.stateful is not None and "objective" in state:
            self.run.caps.stateful.load_state_dict(state["objective"])
        if state.get("pending"):
            device = self.run.accelerator.device
            self.pending = UpdatePlan(batch_from_state(state["pending"]["batch"], device), list(state["pending"]["rows"]))
        self.step = int(state["step"])
        ckpt.set_rng_state(state["rng"])
        if self.run.is_main:
            removed = run_state.restore_metrics_log(self.run_dir, resume.checkpoint, state, self.cfg.trainer.keep_last)
            if removed:
                self.run.console.log(f"removed what an interrupted run left behind: {', '.join(removed)}")
        self.run.console.log(f"resumed from {resume.checkpoint} at step {self.step}")

    # ------------------------------------------------------------------ the run
    def fit(self) -> RunResult:
        tcfg, metrics = self.cfg.trainer, self.run.metrics
        result = RunResult(run_dir=self.run_dir, steps=0)
        if self.run.resume is not None:
            self._restore()
            summary = run_state.read_summary(self.run_dir)
            result.eval_before = summary.get("eval_before", {})
            if self.probe is not None and "probe_before" in summary:
                result.probe_before = probe.read(self.run_dir, "before", summary["probe_before"])
        else:
            result.probe_before = self._probe("before")
            result.eval_before = self.evaluate()
            if result.eval_before:
                metrics.log(0, result.eval_before, split="eval")
                self.run.console.log("held-out before training: " + format_metrics(result.eval_before))
            self._write_summary(result)
        stream = self._update_stream()
        bar = self._progress(range(self.step, tcfg.max_steps), desc=f"{self.cfg.method.name}", initial=self.step,
                             total=tcfg.max_steps, unit="step")
        self.run.console.bar = bar if hasattr(bar, "set_postfix") else None
        started = time.perf_counter()
        for _ in bar:
            values = self._train_step(stream)
            self.step += 1
            if self.run.console.bar is not None:
                self.run.console.bar.set_postfix(loss=f"{values['loss']:.4f}")
            if self.step % tcfg.log_every == 0 or self.step == tcfg.max_steps:
                values["elapsed_s"] = time.perf_counter() - started
                metrics.log(self.step, values)
            if tcfg.eval_every and self.step % tcfg.eval_every == 0 and self.step < tcfg.max_steps:
                scores = self.evaluate()
                if scores:
                    metrics.log(self.step, scores, split="eval")
                    self.run.console.log(f"held-out at step {self.step}: " + format_metrics(scores))
            if tcfg.save_every and self.step % tcfg.save_every == 0:
                self._save()
        self.run.console.bar = None
        result.steps = self.step
        # The last checkpoint comes before the held-out evaluation, so that a run killed after it
        # resumes into exactly one "after" line in metrics.jsonl.
        if tcfg.save_every and self.step % tcfg.save_every != 0:
            self._save()
        result.eval_after = self.evaluate()
        if result.eval_after:
            metrics.log(self.step, result.eval_after, split="eval")
        result.probe_after = self._probe("after")
        if result.probe_before is not None and result.probe_after is not None:
            result.probe_report = probe.report(result.probe_before, result.probe_after, self.cfg.probe, self.run_dir)
        if self.run.is_main:
            saves = self.run.caps.saves_extras
            result.final_model = run_state.write_final_model(self.run_dir, self.cfg, self.policy, self.run.tokenizer,
                                                             saves.save_extras if saves else None)
        self.run.accelerator.wait_for_everyone()
        self._write_summary(result)
        metrics.close()
        return result

    def _write_summary(self, result: RunResult) -> None:
        if self.run.is_main:
            run_state.write_summary(self.cfg, result)


def train(cfg: DictConfig, run_dir: Path) -> RunResult:
    """Train ``cfg`` into ``run_dir`` and return the before/after held-out metrics."""
    run_dir = Path(run_dir)
    commit = prepare(cfg, run_dir)  # claim the folder or check a resume's config changes (alignkit.runfolder)
    trainer = Trainer(cfg, run_dir)
    commit()  # a resume's config changes are recorded once the run they describe is built
    return trainer.fit()
