"""``alignkit.testing``: a pytest plugin for alignkit and for plugin authors (entry point ``pytest11``).

Installed with alignkit, so any test suite gets these fixtures without a ``conftest.py``:

    alignkit_plugins: ``use(*plugins)`` -> a fresh process-wide plugin manager (built-ins, installed
        entry points, plus ``plugins`` registered in-process); the previous one is restored after
        the test.
    alignkit_compose: ``compose(*overrides)`` -> a validated run config on ``model=tiny``.
    alignkit_run: ``run(*overrides, run_dir=None)`` -> trains with the CLI's code path and returns
        the :class:`alignkit.loop.RunResult`.
    alignkit_data: ``data(kind)`` -> overrides pointing at a small synthetic dataset of that record
        kind (``tokens``, ``pairs``, ``ranked``, ``prompts``), written to the test's ``tmp_path``.
    alignkit_objective: ``build(*overrides)`` -> ``(objective, ctx)``: a method's objective built
        exactly as a run builds it (:func:`objective_for`), for unit tests on hand-made batches.

and the conformance checks, plain functions that raise :class:`ConformanceError` (an
``AssertionError``) naming what is wrong::

    from alignkit.testing import check_method, check_scorer

    def test_conformance(tmp_path):
        check_method("simpo", tmp_path=tmp_path)

:func:`check_method` proves that a method's names (registry entries, config files) collide with
nobody, that it composes and validates typed by its schema, that its loss is finite and
differentiable, that two training steps run and checkpoint, that a checkpoint resumes to the same
weights, that no dropout noise reaches the loss, and that batch x accumulation splits train the same
update. Everything runs on ``model=tiny`` with synthetic data: no network, no user files, seconds to
a few minutes per method.

Heavy imports are deferred: pytest loads this module at start-up in every project that has
alignkit installed.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import shutil
import tempfile
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import pytest

TINY_DEFAULTS = ("model=tiny", "trainer.progress=false", "trainer.tensorboard=false")

#: The built-in data format that reads each record kind's synthetic file.
SYNTHETIC_FORMATS = {"tokens": "prompt_completion", "pairs": "pairwise", "ranked": "ranked", "prompts": "prompts",
                     "unpaired": "unpaired"}

#: Small lengths and batches keep a conformance run to seconds on a CPU.
SMALL_RUN = ("data.max_length=96", "data.max_prompt_length=64", "trainer.batch_size=2",
             "trainer.eval_batch_size=4", "trainer.log_every=1", "trainer.eval_every=0")

#: Hydra config groups whose options a plugin may ship (``<group>/<option>.yaml``).
CONFIG_GROUPS = ("method", "model", "data", "trainer", "rollout", "scorer", "loss", "experiment")

#: Record kinds read from a dataset (batch and accumulation are plain config splits of the same examples).
OFFLINE_KINDS = ("tokens", "pairs", "ranked", "unpaired")

#: One plain SGD step: the update is the (negative) gradient itself, so two runs' updates compare gradients.
ONE_SGD_STEP = ("trainer.max_steps=1", "trainer.max_grad_norm=0", "trainer.optimizer._target_=torch.optim.SGD",
                "trainer.optimizer.lr=1.0", "~trainer.optimizer.weight_decay", "trainer.scheduler.name=constant",
                "trainer.scheduler.warmup_steps=0", "trainer.save_every=0", "rollout.shuffle=false",
                "data.eval_fraction=0")

#: The scorer :func:`check_method` adds for methods that consume prompts when none is configured.
TESTING_SCORER = "alignkit_testing_length"


class ConformanceError(AssertionError):
    """A plugin does not meet alignkit's contract; the message says which check and why."""


def _fail(name: str, check: str, why: str) -> ConformanceError:
    return ConformanceError(f"check_method('{name}'): {check}: {why}")


# ----------------------------------------------------------------------------- composing and running
def compose_run_config(*overrides: str, run_dir: str | Path | None = None) -> Any:
    """Compose ``train.yaml`` on ``model=tiny`` with ``overrides`` and validate it."""
    from alignkit.compose import compose, validate

    extra = [f"hydra.run.dir={run_dir}"] if run_dir else []
    cfg = compose([*TINY_DEFAULTS, *overrides, *extra])
    validate(cfg)
    return cfg


def run_training(*overrides: str, run_dir: str | Path) -> Any:
    """Compose and train into ``run_dir`` (no Hydra job machinery)."""
    from alignkit.loop import train

    cfg = compose_run_config(*overrides)
    return train(cfg, Path(run_dir))


class BuiltObjective(NamedTuple):
    """What :func:`objective_for` returns; unpacks as ``objective, ctx``.

    Attributes:
        objective: what the method's ``build(ctx)`` returned (the run's objective).
        ctx: the :class:`alignkit.api.RunContext` it was built with: ``ctx.cfg`` (the composed config),
            ``ctx.policy`` (the policy as the loop holds it, wrapped; ``alignkit.api.unwrap_lm(ctx.policy)``
            is the plain HF model), ``ctx.tokenizer``, ``ctx.rollout`` (serves batches of the run's data),
            ``ctx.run_dir``, ``ctx.registry``, ``ctx.accelerator``.
    """

    objective: Any
    ctx: Any


def _sets_data(overrides: Iterable[str]) -> bool:
    """Whether ``overrides`` choose the data (``data=...``, ``data.path=...``, ``+data.x=...``)."""
    return any(o.split("=", 1)[0].lstrip("+~").split(".")[0] == "data" for o in overrides)


def objective_for(*overrides: str, run_dir: str | Path | None = None) -> BuiltObjective:
    """Build a method's objective outside a training run, exactly as a run builds it, for unit tests.

    Composes ``train.yaml`` on ``model=tiny`` with ``overrides`` (``"method=mine"`` selects the method),
    then builds the run (accelerator, seed, policy, rollout, scorer, objective, optimizer) the way
    ``alignkit train`` does, without training. Unless ``overrides`` choose the data
    (``data=`` / ``data.*``), a synthetic dataset of the method's record kind (:func:`synthetic_data`) is
    written to ``run_dir/data`` first, so nothing is read from the network or the bundled datasets.

    Example::

        objective, ctx = objective_for("method=mine", "method.lam=0.2")
        out = objective(my_pair_batch)            # a LossOutput; out.parts(), out.total()
        units = objective.weight(my_pair_batch)   # a number, or term name -> units

    Args:
        overrides: Hydra overrides, ``method=<name>`` among them (train.yaml's default method otherwise).
        run_dir: the folder the run would write to (caches, the synthetic data); default: a new
            temporary folder, left in place (the objective may keep files there).

    Returns:
        ``(objective, ctx)`` (:class:`BuiltObjective`).

    Raises:
        alignkit.api.ConfigError: the overrides do not compose (a wrong key or value type), or
            the method's ``build`` did not return an objective; any error the method's ``build`` raises.
    """
    from alignkit.plugin_manager import get_manager
    from alignkit.run import build_run

    folder = Path(tempfile.mkdtemp(prefix="alignkit-objective-") if run_dir is None else run_dir)
    cfg = compose_run_config(*overrides)
    if not _sets_data(overrides):
        kind = get_manager().registry.get("methods", cfg.method.name, where="method").kind_for(cfg)
        cfg = compose_run_config(*synthetic_data(kind, folder / "data"), *overrides)
    run = build_run(cfg, folder)
    return BuiltObjective(run.objective, run.ctx)


# ----------------------------------------------------------------------------- plugin managers
def use_plugins(*plugins: Any, entry_points: Iterable[Any] | None = None,
                builtins: Iterable[str] | None = None) -> Any:
    """Install a fresh process-wide plugin manager and return it (loaded).

    Args:
        plugins: plugin modules or objects with hook implementations, registered in-process after the
            built-ins (as ``(name, plugin)`` pairs, or bare, named after their ``__name__``).
        entry_points: the entry points to consider (default: the installed ``alignkit`` group; pass
            ``[]`` for built-ins only).
        builtins: built-in plugin modules (default: all of them).
    """
    from alignkit import compose
    from alignkit.plugin_manager import BUILTIN_PLUGINS, PluginManager, set_manager

    extra = [p if isinstance(p, tuple) else (getattr(p, "__name__", type(p).__name__), p) for p in plugins]
    set_manager(None)
    compose.reset()
    manager = PluginManager(builtins=BUILTIN_PLUGINS if builtins is None else builtins,
                            entry_points=entry_points, extra=extra).load()
    set_manager(manager)
    return manager


# ----------------------------------------------------------------------------- synthetic data
def synthetic_rows(kind: str, n: int = 16) -> list[dict]:
    """``n`` small rows of a record kind, in the format :data:`SYNTHETIC_FORMATS` names for it."""
    rows = []
    for i in range(n):
        prompt = f"Question {i}: what is {i} plus {i}?"
        # Answers of different lengths: a loss term averaged over the wrong units shows under accumulation.
        because = " Because adding a number to itself doubles it." * (i % 3)
        good, bad, meh = f"It is {2 * i}.{because}", f"I will not answer question {i}.", f"Maybe {2 * i + 1}."
        if kind == "tokens":
            rows.append({"prompt": prompt, "completion": good})
        elif kind == "pairs":
            rows.append({"prompt": prompt, "chosen": good, "rejected": bad})
        elif kind == "ranked":
            rows.append({"prompt": prompt, "completions": [good, meh, bad]})
        elif kind == "prompts":
            rows.append({"prompt": prompt})
        elif kind == "unpaired":  # alternately a good and a bad answer
            rows.append({"prompt": prompt, "completion": good if i % 2 == 0 else bad, "label": i % 2 == 0})
        else:
            raise ValueError(f"unknown record kind {kind!r}; expected one of {tuple(SYNTHETIC_FORMATS)}")
    return rows


def synthetic_data(kind: str, folder: str | Path, n: int = 16) -> list[str]:
    """Write ``n`` synthetic rows of ``kind`` to ``folder`` and return the overrides that train on them.

    A quarter of the rows is held out, so ``evaluate`` runs too.
    """
    path = Path(folder) / f"synthetic_{kind}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in synthetic_rows(kind, n)))
    return ["data=custom", f"data.path={path}", f"data.format={SYNTHETIC_FORMATS[kind]}", "data.eval_fraction=0.25"]


# ----------------------------------------------------------------------------- the testing scorer
def _length_reward(batch: Any) -> Any:
    """Reward = completion length in characters / 100: deterministic, cheap, varies between samples."""
    import torch

    return torch.tensor([len(str(c)) / 100.0 for c in batch.completions], dtype=torch.float32)  # (B,)


class _TestingScorers:
    """An in-process plugin giving :func:`check_method` a scorer for online methods."""

    @staticmethod
    def register_scorers(register: Callable) -> None:
        from alignkit.specs import ScorerSpec

        register(ScorerSpec(name=TESTING_SCORER, build=lambda ctx, cfg: _length_reward,
                            summary="completion length / 100 (alignkit.testing)"))


def _testing_plugin() -> Any:
    from alignkit.hookspecs import hookimpl

    plugin = _TestingScorers()
    plugin.register_scorers = hookimpl(_TestingScorers.register_scorers)  # type: ignore[method-assign]
    return plugin


# ----------------------------------------------------------------------------- names and config files
def _config_root(url: str) -> Path | None:
    import importlib.resources

    if url.startswith("pkg://"):
        try:
            return Path(str(importlib.resources.files(url[len("pkg://"):].replace("/", "."))))
        except (ModuleNotFoundError, TypeError):
            return None
    return Path(url[len("file://"):] if url.startswith("file://") else url)


def config_options(registry: Any) -> dict[tuple[str, str], list[str]]:
    """``(group, option)`` -> owners of every config file on the search path (core's as ``alignkit``)."""
    dirs = [("pkg://alignkit.conf", "alignkit")] + [(d, str(owner)) for d, owner in registry.config_dirs]
    found: dict[tuple[str, str], list[str]] = {}
    for url, owner in dirs:
        root = _config_root(url)
        if root is None or not root.is_dir():
            continue
        for group in CONFIG_GROUPS:
            folder = root / group
            if folder.is_dir():
                for path in sorted(folder.glob("*.yaml")):
                    found.setdefault((group, path.stem), []).append(owner)
    return found


def _check_names(name: str, manager: Any) -> str:
    registry = manager.registry
    owner = registry.owner("methods", name)
    own = {str(owner)} | ({"alignkit"} if owner.distribution == "alignkit" else set())
    for failure in manager.failures:
        if failure.distribution == owner.distribution:
            raise _fail(name, "plugin loads", str(failure))
    options = config_options(registry)
    clashes = [f"{group}/{option}.yaml is shipped by {' and by '.join(owners)}"
               for (group, option), owners in sorted(options.items()) if len(owners) > 1 and own & set(owners)]
    if clashes:
        raise _fail(name, "names do not collide", "; ".join(clashes) + " (Hydra would silently use the first)")
    if ("method", name) not in options:
        raise _fail(name, "config file", f"no method/{name}.yaml in any config dir; ship one in the folder your "
                                         "register_config_dirs hook returns")
    return str(owner)


# ----------------------------------------------------------------------------- check_method
def _schema_probe(schema: Any) -> str | None:
    """A ``method.<field>=<wrong type>`` override the schema must reject, or None."""
    for f in fields(schema):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        if kind in ("float", "int"):
            return f"method.{f.name}=not_a_number"
    return None


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    state: dict[str, Any] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    return state


def check_method(name: str, *overrides: str, tmp_path: str | Path | None = None, steps: int = 2,
                 resume: bool = True, atol: float = 1e-6) -> dict[str, Any]:
    """Run alignkit's conformance checks on method ``name``; raise :class:`ConformanceError` on failure.

    Checks, in order (each name is what ``report["checks"]`` lists once it passed):

    1. **registered**: the method is in the registry, its plugin loaded without failure, and none of
       its config files (``<group>/<option>.yaml``) is shipped by another plugin or by core.
    2. **composes**: ``method=<name>`` composes and validates on ``model=tiny``, sets
       ``method.name=<name>``, and ``cfg.method`` is typed by the spec's schema (a wrong value type for
       a number field, ``method.<field>=not_a_number``, must fail at composition).
    3. **loss**: on the first batch, ``LossOutput.total()`` (the one-term ``loss``, or the sum of the
       ``terms`` with their coefficients) is a finite 0-dim tensor that requires grad, the metrics are
       finite, and its gradient reaches the parameters, finite (all-zero is noted, not failed).
    4. **trains**: ``steps`` optimizer steps run, logging finite train losses, writing a checkpoint
       per step and the final model.
    5. **resumes** (``resume=True``): a copy of that run cut back to its first checkpoint and resumed
       ends with the same weights (to ``atol``) and logs the same losses.
    6. **dropout-free**: on a tiny model whose ``config.json`` enables dropout, the first
       micro-batch's loss is the same under two random seeds (every model the method loads must be
       loaded through ``alignkit.api.load_model``, or have dropout turned off).
    7. **accumulates**: one plain SGD step trains the same update from the data as one batch and as
       accumulated micro-batches (offline kinds: 4 examples as batch 4 x accumulation 1 and batch 1 x
       accumulation 4; online: one rollout's rows whole and as two halves with ragged answer lengths),
       to 1e-5 + 1e-4 x the largest update: every loss term is a mean over its own units and
       ``weight`` reports them; and the step logs the same metrics (to 1e-4 relative; a metric over
       other units than the loss's is a ``Mean`` / ``Max`` / ``Min`` / ``Sum``). Repeated with each of the
       spec's ``term_options``.

    Data: unless ``overrides`` set ``data=``/``data.*``, a synthetic dataset of the method's record
    kind is written to ``tmp_path``. Methods that consume prompts (online methods) and have no scorer
    configured get a testing scorer (completion length) registered in-process.

    Args:
        name: the method (``method=<name>``).
        overrides: extra Hydra overrides (``method.beta=0.5``, ``loss=ipo``, ``scorer=mine`` ...).
        tmp_path: where runs are written (default: a temporary folder, removed afterwards).
        steps: optimizer steps of the training check (at least 2 when ``resume``).
        resume: run the resume check.
        atol: tolerance of the resumed-weights comparison (max absolute difference of any weight).

    Returns:
        The report, a dict: ``method`` (the name), ``owner`` (the plugin that registered it, with its
        version), ``kind`` (the record kind it consumed), ``checks`` (the names above that passed, in
        order), ``notes`` (what passed but deserves a look, e.g. all-zero gradients), ``loss`` (the
        first batch's loss, a float) and ``losses`` (the train loss of each step).

    Raises:
        ConformanceError: ``check_method('<name>'): <check>: <why>``, the first check that failed.
        ValueError: ``resume=True`` with ``steps < 2``.
    """
    from omegaconf import OmegaConf

    from alignkit.errors import AlignkitError, ConfigError
    from alignkit.plugin_manager import get_manager, set_manager

    if resume and steps < 2:
        raise ValueError("check_method: resume=True needs steps >= 2")
    own_tmp = tmp_path is None
    root = Path(tempfile.mkdtemp(prefix=f"alignkit-check-{name}-") if own_tmp else tmp_path) / f"check_{name}"
    root.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"method": name, "checks": [], "notes": []}
    previous = get_manager()
    manager = previous
    try:
        # 1. registered, names do not collide
        if ("methods", name) not in manager.registry:
            failures = "; ".join(str(f) for f in manager.failures)
            raise _fail(name, "registered", f"no method '{name}' (registered: {', '.join(manager.registry.names('methods'))})"
                        + (f"; plugin failures: {failures}" if failures else ""))
        spec = manager.registry.get("methods", name)
        report["owner"] = _check_names(name, manager)
        report["checks"].append("registered")

        # 2. composes and validates, typed by its schema
        try:
            cfg = compose_run_config(f"method={name}", *overrides)
        except AlignkitError as exc:
            raise _fail(name, "composes", str(exc)) from exc
        if cfg.method.name != name:
            raise _fail(name, "composes", f"method/{name}.yaml sets method.name={cfg.method.name!r}")
        if spec.schema is not None:
            typed = OmegaConf.get_type(cfg.method)
            if typed is not spec.schema:
                raise _fail(name, "composes", f"cfg.method is {getattr(typed, '__name__', typed)}, not the schema "
                            f"{spec.schema.__name__}; put '/schema/method/{name}@method' first in the defaults of "
                            f"method/{name}.yaml")
            probe = _schema_probe(spec.schema) if is_dataclass(spec.schema) else None
            if probe is not None:
                try:
                    compose_run_config(f"method={name}", *overrides, probe)
                except ConfigError:
                    pass
                else:
                    raise _fail(name, "composes", f"'{probe}' was accepted; the schema does not type cfg.method")
        kind = spec.kind_for(cfg)
        report["kind"] = kind
        data = [] if _sets_data(overrides) else synthetic_data(kind, root)
        extra: list[str] = []
        if kind == "prompts" and cfg.scorer.name == "none" and not any(o.startswith("scorer") for o in overrides):
            if ("scorers", TESTING_SCORER) not in manager.registry:
                # The same plugins as now, plus the testing scorer.
                manager = use_plugins(*previous._extra, ("alignkit.testing", _testing_plugin()),
                                      entry_points=previous._entry_points, builtins=previous._builtins)
            extra = [f"scorer.name={TESTING_SCORER}"]
        if "max_new_tokens" in cfg.rollout and not any(o.startswith("rollout.max_new_tokens") for o in overrides):
            extra.append("rollout.max_new_tokens=8")  # generation dominates an online step on CPU
        full = [f"method={name}", *SMALL_RUN, *data, *extra, *overrides]
        try:
            cfg = compose_run_config(*full)
        except AlignkitError as exc:
            raise _fail(name, "composes", f"with synthetic {kind} data: {exc}") from exc
        report["checks"].append("composes")

        # 3. loss finite and differentiable
        report["loss"], zero = _check_loss(name, cfg, root / "probe")
        if zero:
            report["notes"].append("every gradient was zero on the first batch (e.g. equal rewards)")
        report["checks"].append("loss")

        # 4. two training steps, a checkpoint per step
        from alignkit.checkpoint import list_checkpoints
        from alignkit.loop import train
        from alignkit.metrics import read_metrics

        run_cfg = compose_run_config(*full, f"trainer.max_steps={steps}", "trainer.save_every=1",
                                     f"trainer.keep_last={steps}")
        first = root / "run"
        try:
            result = train(run_cfg, first)
        except AlignkitError as exc:
            raise _fail(name, "trains", str(exc)) from exc
        losses = [r["loss"] for r in read_metrics(first) if r.get("split") == "train"]
        if result.steps != steps or len(losses) != steps or not all(_finite(v) for v in losses):
            raise _fail(name, "trains", f"{result.steps} steps, train losses {losses}; expected {steps} finite")
        saved = [p.name for p in list_checkpoints(first)]
        if len(saved) != steps or result.final_model is None or not _weights(result.final_model):
            raise _fail(name, "trains", f"checkpoints {saved}, final model {result.final_model}")
        report["losses"] = losses
        report["checks"].append("trains")

        # 5. resume from the first checkpoint ends where the uninterrupted run ended
        if resume:
            second = root / "resumed"
            shutil.copytree(first, second)
            for checkpoint in list_checkpoints(second)[1:]:
                shutil.rmtree(checkpoint)
            shutil.rmtree(second / "final")
            try:
                resumed = train(compose_run_config(*full, f"trainer.max_steps={steps}", "trainer.save_every=1",
                                                   f"trainer.keep_last={steps}", f"resume={second}"), second)
            except AlignkitError as exc:
                raise _fail(name, "resumes", str(exc)) from exc
            _compare_runs(name, first, second, result.final_model, resumed.final_model, atol)
            report["checks"].append("resumes")

        # 6. no dropout noise at step 0: a model whose config enables dropout trains without it
        _check_dropout_free(name, full, root / "dropout")
        report["checks"].append("dropout-free")

        # 7. batch x accumulation invariance, for the method alone and with each option that adds a term
        check = _check_accumulation if kind in OFFLINE_KINDS else _check_rollout_accumulation
        for option in ("", *spec.term_options):
            check(name, [*full, *([option] if option else [])], root / "accumulation", option)
        report["checks"].append("accumulates")
    finally:
        if manager is not previous:
            set_manager(previous)
            from alignkit import compose

            compose.reset()
        if own_tmp:
            shutil.rmtree(root.parent, ignore_errors=True)
    return report


def _check_loss(name: str, cfg: Any, run_dir: Path) -> tuple[float, bool]:
    import torch

    from alignkit.errors import AlignkitError
    from alignkit.interfaces import LossOutput
    from alignkit.loop import Trainer
    from alignkit.step_metrics import metric_float

    try:
        trainer = Trainer(cfg, run_dir)
        batch = next(trainer._update_stream())
        out = trainer.objective(batch)
        loss = out.total() if isinstance(out, LossOutput) else None
    except AlignkitError as exc:
        raise _fail(name, "loss", str(exc)) from exc
    except TypeError as exc:  # LossOutput without loss or terms
        raise _fail(name, "loss", str(exc)) from exc
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise _fail(name, "loss", f"the objective must return LossOutput(loss=<0-dim tensor>, ...) or "
                                  f"LossOutput(terms={{name: 0-dim tensor}}), got {out!r:.200}")
    if not torch.isfinite(loss):
        raise _fail(name, "loss", f"loss is {float(loss.detach())} on the first batch")
    bad = {k: v for k, v in out.metrics.items() if not _finite(metric_float(v))}
    if bad:
        raise _fail(name, "loss", f"non-finite metrics {bad}")
    if not loss.requires_grad:
        raise _fail(name, "loss", "loss does not require grad (detached, or computed under no_grad)")
    loss.backward()
    params = [p for p in trainer.policy.parameters() if p.requires_grad]
    params += [p for p in trainer.run.loose]
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        raise _fail(name, "loss", "no parameter received a gradient")
    if not all(torch.isfinite(g).all() for g in grads):
        raise _fail(name, "loss", "a gradient is NaN or inf")
    # All-zero gradients are legitimate at times (policy gradient with equal rewards): noted, not failed.
    zero = not any(bool(g.abs().sum() > 0) for g in grads)
    value = float(loss.detach())
    del trainer
    return value, zero


def _check_accumulation(name: str, overrides: list[str], root: Path, option: str, examples: int = 4) -> None:
    """One SGD step on the same ``examples`` records as one batch, and as ``examples`` accumulated
    micro-batches of one: the weights after it must agree (each loss term normalised over the global
    batch). Both runs start from the same seeded weights, heads included."""
    from alignkit.errors import AlignkitError
    from alignkit.loop import train
    from alignkit.models import load_model

    from alignkit.metrics import read_metrics

    what = f"accumulates{f' ({option})' if option else ''}"
    finals, logged = [], []
    for batch, accum in ((examples, 1), (1, examples)):
        cfg = compose_run_config(*overrides, *ONE_SGD_STEP, f"trainer.batch_size={batch}",
                                 f"trainer.grad_accum={accum}")
        run_dir = root / f"{(option or 'plain').replace('=', '_').replace('.', '_')}-{batch}x{accum}"
        try:
            finals.append(_weights(train(cfg, run_dir).final_model))
        except AlignkitError as exc:
            raise _fail(name, what, str(exc)) from exc
        logged.append(next((r for r in read_metrics(run_dir) if r.get("split") == "train"), {}))
    initial = {k: v.detach() for k, v in load_model(cfg.model)[0].state_dict().items()}
    how = f"batch {examples} x accumulation 1 and batch 1 x accumulation {examples}"
    _compare_updates(name, what, initial, *finals, how)
    _compare_metrics(name, what, *logged, how)


def _check_rollout_accumulation(name: str, overrides: list[str], root: Path, option: str) -> None:
    """Sampled data cannot be re-read in another batch size, so for online methods the same first update
    micro-batch (a rollout, prepared by the objective) is trained on whole, and as two accumulated halves
    of its rows, each with one SGD step from the same initial weights: the weights after must agree.

    A tiny random model's completions all run to the length cap, which would make rows and tokens
    proportional (and a wrong unit invisible); each row keeps a different number of its completion
    tokens as targets (:func:`_ragged`), a valid batch all the same."""
    import torch

    from alignkit.errors import AlignkitError
    from alignkit.loop import Trainer

    what = f"accumulates{f' ({option})' if option else ''}"
    slug = (option or "plain").replace("=", "_").replace(".", "_")
    finals, logged = [], []
    try:
        whole = Trainer(compose_run_config(*overrides, *ONE_SGD_STEP, "trainer.grad_accum=1"), root / f"{slug}-1")
        initial = {k: v.detach().clone() for k, v in whole.policy.state_dict().items()}
        batch = _ragged(next(whole._update_stream()))
        n = batch.num_rows
        halves = [batch.select(torch.arange(0, n // 2)), batch.select(torch.arange(n // 2, n))]
        split = Trainer(compose_run_config(*overrides, *ONE_SGD_STEP, "trainer.grad_accum=2"), root / f"{slug}-2")
        for trainer, micro in ((whole, [batch]), (split, halves)):
            logged.append(trainer._train_step(iter(micro)))
            finals.append({k: v.detach().clone() for k, v in trainer.policy.state_dict().items()})
    except AlignkitError as exc:
        raise _fail(name, what, str(exc)) from exc
    how = f"one rollout's {n} rows as 1 micro-batch and as 2 accumulated halves"
    _compare_updates(name, what, initial, *finals, how)
    _compare_metrics(name, what, *logged, how)


def _ragged(batch: Any) -> Any:
    """``batch`` with row r keeping only its first 1 + r mod L completion tokens as targets."""
    import dataclasses

    from alignkit.tokenize import IGNORE_INDEX

    labels, mask = batch.labels.clone(), batch.response_mask()  # (N, T), (N, T-1)
    for row in range(batch.num_rows):
        positions = mask[row].nonzero().flatten()  # log-prob positions t predict label column t + 1
        labels[row, positions[1 + row % max(1, len(positions)):] + 1] = IGNORE_INDEX
    return dataclasses.replace(batch, labels=labels)


def _compare_updates(name: str, what: str, initial: dict[str, Any], whole: dict[str, Any], split: dict[str, Any],
                     how: str) -> None:
    scale = max(float((whole[k].double() - initial[k].double()).abs().max()) for k in whole if k in initial)
    worst = max(float((whole[k].double() - split[k].double()).abs().max()) for k in whole)
    if scale == 0.0:
        raise _fail(name, what, "one SGD step at lr 1 changed no weight; the check has nothing to compare")
    if worst > 1e-5 + 1e-4 * scale:
        raise _fail(name, what, f"{how} give updates that differ by {worst:.3g} (largest update {scale:.3g}, "
                                f"{100 * worst / scale:.2g}%); each loss term must be a mean over its own units "
                                "and weight() must report them (see alignkit.api.Objective and Step 4 of docs/plugins.md)")


def _compare_metrics(name: str, what: str, whole: dict[str, Any], split: dict[str, Any], how: str) -> None:
    """The step's logged metrics (wall times aside) must not depend on the split into micro-batches."""
    from alignkit.metrics import is_wall_time

    differ = []
    for key in sorted(whole.keys() & split.keys()):
        a, b = whole[key], split[key]
        if is_wall_time(key) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
            continue
        if not (math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5) or (math.isnan(a) and math.isnan(b))):
            differ.append(f"{key} {a:.6g} vs {b:.6g}")
    if differ:
        raise _fail(name, what, f"{how} log different step metrics ({', '.join(differ[:4])}); a metric averaged over "
                                "other units than the loss's first term must say so: alignkit.api.Mean(value, count), "
                                "Max, Min or Sum (see alignkit.api.LossOutput)")


def _dropout_model(folder: Path) -> Path:
    """A tiny random Llama folder whose config enables dropout (attention 0.1)."""
    from omegaconf import OmegaConf

    from alignkit.checkpoint import write_model
    from alignkit.models import ModelConfig, load_model

    if not (folder / "config.json").exists():
        cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), {"source": "random", "disable_dropout": False})
        model, tokenizer = load_model(cfg)
        model.config.attention_dropout = 0.1
        write_model(model, tokenizer, folder)
    return folder


def _check_dropout_free(name: str, overrides: list[str], root: Path) -> None:
    """Step 0 on a model whose config enables dropout: the first micro-batch's loss is the same under two
    different random seeds (no dropout noise in policy, reference, critic or reward model)."""
    import torch

    from alignkit.errors import AlignkitError
    from alignkit.loop import Trainer

    folder = _dropout_model(root / "model")
    cfg = compose_run_config(*overrides, f"model.path={folder}", "model.name=dropout")
    try:
        trainer = Trainer(cfg, root / "run")
        batch = next(trainer._update_stream())
        losses = []
        for seed in (1, 2):
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(seed)
                losses.append(trainer.objective(batch).total())
    except AlignkitError as exc:
        raise _fail(name, "dropout-free", str(exc)) from exc
    if not torch.equal(losses[0], losses[1]):
        raise _fail(name, "dropout-free", f"on a model whose config enables dropout, the first loss is "
                                          f"{float(losses[0]):.8g} under one seed and {float(losses[1]):.8g} under "
                                          "another: dropout is on (load every model the method uses with "
                                          "alignkit.api.load_model, which turns dropout off, or use ctx.reference())")


def _compare_runs(name: str, first: Path, second: Path, final_a: Path | None, final_b: Path | None,
                  atol: float) -> None:

    from alignkit.metrics import read_metrics

    if final_a is None or final_b is None:
        raise _fail(name, "resumes", "no final model")
    a, b = _weights(final_a), _weights(final_b)
    if a.keys() != b.keys():
        raise _fail(name, "resumes", f"the resumed model has other tensors: {sorted(a.keys() ^ b.keys())[:3]}")
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    if worst > atol:
        raise _fail(name, "resumes", f"weights after resuming differ by up to {worst:.3g} (> {atol}) from an "
                                     "uninterrupted run; save and restore every state the objective and rollout "
                                     "keep (state_dict / load_state_dict)")
    losses_a = [r["loss"] for r in read_metrics(first) if r.get("split") == "train"]
    losses_b = [r["loss"] for r in read_metrics(second) if r.get("split") == "train"]
    if len(losses_a) != len(losses_b) or any(abs(x - y) > max(atol, 1e-4 * abs(x)) for x, y in zip(losses_a, losses_b)):
        raise _fail(name, "resumes", f"logged losses {losses_b} after resuming, {losses_a} uninterrupted")


# ----------------------------------------------------------------------------- check_scorer
def check_scorer(name: str, *overrides: str, batch: dict | None = None) -> Any:
    """Conformance of scorer ``name``: composes typed, builds, returns finite float rewards (B,) or (B, A).

    Args:
        name: the scorer (``scorer=<name>``).
        overrides: extra Hydra overrides (``scorer.include=[Paris]`` ...).
        batch: the batch to score (default: 4 chat prompts with text completions, the shape online
            rollouts produce: ``prompts`` lists of messages, ``completions`` strings).

    Returns:
        The rewards tensor.
    """
    import torch
    from omegaconf import OmegaConf

    from alignkit.batches import RolloutBatch
    from alignkit.context import RunContext
    from alignkit.errors import AlignkitError
    from alignkit.models import load_model
    from alignkit.plugin_manager import get_manager

    def fail(check: str, why: str) -> ConformanceError:
        return ConformanceError(f"check_scorer('{name}'): {check}: {why}")

    registry = get_manager().registry
    if ("scorers", name) not in registry:
        raise fail("registered", f"no scorer '{name}' (registered: {', '.join(registry.names('scorers'))})")
    spec = registry.get("scorers", name)
    try:
        cfg = compose_run_config(f"scorer={name}", *overrides)
    except AlignkitError as exc:
        raise fail("composes", str(exc)) from exc
    if cfg.scorer.name != name:
        raise fail("composes", f"scorer/{name}.yaml sets scorer.name={cfg.scorer.name!r}")
    if spec.schema is not None and OmegaConf.get_type(cfg.scorer) is not spec.schema:
        raise fail("composes", f"cfg.scorer is not typed by {spec.schema.__name__}; put "
                               f"'/schema/scorer/{name}@_here_' first in the defaults of scorer/{name}.yaml")
    from accelerate import Accelerator

    policy, tokenizer = load_model(cfg.model)
    ctx = RunContext(cfg=cfg, run_dir=Path(tempfile.gettempdir()), registry=registry, policy=policy,
                     tokenizer=tokenizer, accelerator=Accelerator(cpu=True), kind="prompts")
    if batch is None:
        rows = synthetic_rows("pairs", 4)
        batch = RolloutBatch.from_texts([[{"role": "user", "content": r["prompt"]}] for r in rows],
                                        [r["chosen"] if i % 2 else r["rejected"] for i, r in enumerate(rows)])
    try:
        rewards = spec.build(ctx, cfg.scorer)(batch)
    except AlignkitError as exc:
        raise fail("scores", str(exc)) from exc
    n = batch.num_rows
    if not isinstance(rewards, torch.Tensor) or rewards.dim() not in (1, 2) or rewards.shape[0] != n:
        raise fail("scores", f"expected a tensor (B,) or (B, A) with B={n}, got {rewards!r:.200}")
    if not rewards.is_floating_point() or not torch.isfinite(rewards).all():
        raise fail("scores", f"rewards must be finite floats, got {rewards}")
    return rewards


# ----------------------------------------------------------------------------- fixtures
@contextlib.contextmanager
def plugin_session() -> Iterator[Callable[..., Any]]:
    """``with plugin_session() as use:`` -- call ``use(*plugins)`` (:func:`use_plugins`) inside; the
    process-wide plugin manager in place before is put back afterwards."""
    import alignkit.plugin_manager as pm
    from alignkit import compose

    saved = pm.current_manager()  # None (not loaded yet) is restored as None
    try:
        yield use_plugins
    finally:
        pm.set_manager(saved)
        compose.reset()


@pytest.fixture
def alignkit_plugins() -> Iterator[Callable[..., Any]]:
    """``use(*plugins, entry_points=None, builtins=None)`` -> a fresh plugin manager (restored after)."""
    with plugin_session() as use:
        yield use


@pytest.fixture
def alignkit_compose() -> Callable[..., Any]:
    """``compose(*overrides)`` -> a validated run config on ``model=tiny``."""
    return compose_run_config


@pytest.fixture
def alignkit_run(tmp_path: Path) -> Callable[..., Any]:
    """``run(*overrides, run_dir=None)`` -> :class:`alignkit.loop.RunResult` of a training run."""

    def run(*overrides: str, run_dir: str | Path | None = None) -> Any:
        return run_training(*overrides, run_dir=run_dir or tmp_path / "run")

    return run


@pytest.fixture
def alignkit_objective(tmp_path: Path) -> Callable[..., BuiltObjective]:
    """``build(*overrides)`` -> ``(objective, ctx)`` of a method on ``model=tiny`` (:func:`objective_for`),
    each call in its own folder under the test's ``tmp_path``."""
    calls = itertools.count()

    def build(*overrides: str) -> BuiltObjective:
        return objective_for(*overrides, run_dir=tmp_path / f"objective-{next(calls)}")

    return build


@pytest.fixture
def alignkit_data(tmp_path: Path) -> Callable[..., list[str]]:
    """``data(kind, n=16)`` -> overrides training on ``n`` synthetic rows of that record kind."""

    def data(kind: str, n: int = 16) -> list[str]:
        return synthetic_data(kind, tmp_path / "data", n)

    return data
