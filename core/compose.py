"""The bridge to Hydra: plugin config dirs on the search path, schemas in the ConfigStore, and
composition errors turned into one readable line.

Plugin config folders join Hydra's search path through one ``SearchPathPlugin`` registered by core
with ``Plugins.instance().register`` (the ``hydra_plugins`` namespace route breaks with editable
installs). Each registered spec's dataclass ``schema`` is stored in the ConfigStore as
``schema/<group>/<name>``; a group option's YAML names it in its defaults list, so a wrong value
type (``method.beta=abc``) or an unknown key fails at composition with the key's full name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin
from omegaconf import DictConfig, OmegaConf

from .data import DataConfig, asset_path, bundled_value
from .distributed import DeepSpeedConfig, FsdpConfig, check_trainer
from .errors import ConfigError, UnknownNameError
from .models import ModelConfig
from .plugin_manager import get_manager
from .probe import ProbeConfig
from .registry import Registry

CONFIG_MODULE = "alignkit.conf"
CONFIG_NAME = "train"
GROUP_KINDS = {"method": "methods", "rollout": "rollouts", "scorer": "scorers", "loss": "losses"}


@dataclass
class TrainerConfig:
    """The ``trainer`` config group: how the generic loop runs.

    Attributes:
        max_steps: optimizer steps to run.
        batch_size: rollout batch size (prompts or rows per batch); the global batch when several
            processes train (each one takes ``batch_size / N``).
        grad_accum: micro-batches accumulated per optimizer step.
        max_grad_norm: gradient clipping (0 disables).
        seed: seeds Python, NumPy and torch (data order and dropout follow it).
        eval_every: evaluate on held-out data every N steps (0: only at start and end).
        eval_batch_size: batch size for held-out evaluation.
        save_every: checkpoint every N steps (0: only the final model).
        keep_last: checkpoints kept; older ones are deleted.
        log_every: write metrics every N steps.
        progress: show a progress bar (tqdm: steps done, rate, elapsed and ETA, current loss).
        tensorboard: shorthand; false drops ``tensorboard`` from ``trackers``.
        trackers: accelerate experiment trackers fed with every metric line: ``tensorboard``
            (default, ``<run>/tensorboard``), ``wandb``, ``mlflow``, ``comet_ml``, ``aim``, ... (each
            needs its package installed). Metrics always go to ``metrics.jsonl`` as well.
        tracker_project: the trackers' project (W&B project, MLflow experiment); runs are named
            after their folder.
        tracker_kwargs: per-tracker init options, e.g. ``+trainer.tracker_kwargs.wandb.entity=me``.
        mixed_precision: accelerate's ``no`` | ``bf16`` | ``fp16``.
        length_grouping: split each log-prob forward's rows, sorted by length, into groups whose rows
            fill at least this share of their group's width, each run without the rest's padding
            (0: one padded forward; see ``alignkit.logprobs``).
        shared_prefix: run the prompt that a group of rows repeats (a rollout's k samples, a preference
            pair, a ranked list) once per log-prob forward and backward, rows packed behind it with a
            4-D attention mask (``alignkit.shared_prefix``); false: every row runs on its own.
        activation_checkpointing: recompute activations in the backward pass in every N-th decoder
            layer (1: all; 0: off): far less memory for ~1/3 more forward compute (``alignkit.memory``).
        release_memory: on Linux/glibc, ``mmap`` every allocation of 1 MiB or more so freed tensors
            leave the process at once: peak RSS follows the live tensors (−60% in a checkpointed
            SmolLM2 step) at a time cost (+8% generation, up to +30% a training step; ``alignkit.memory``).
        cpu: force CPU even when a GPU is present.
        strategy: how several processes share the work (``alignkit launch --nproc N``): ``none`` /
            ``ddp`` (DistributedDataParallel), ``fsdp`` (``trainer.fsdp``), ``deepspeed``
            (``trainer.deepspeed``, ZeRO-2/3). ``batch_size`` is then the global batch, split evenly.
        find_unused_parameters: DDP option for models whose forward skips some parameters.
        fsdp: FSDP plugin options (see ``alignkit.distributed.FsdpConfig``).
        deepspeed: DeepSpeed ZeRO options (see ``alignkit.distributed.DeepSpeedConfig``).
        optimizer: ``_target_`` + kwargs, instantiated with ``params=``.
        scheduler: ``name`` (constant | linear | cosine) and ``warmup_steps``.
    """

    max_steps: int = 100
    batch_size: int = 4
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    seed: int = 0
    eval_every: int = 0
    eval_batch_size: int = 8
    save_every: int = 0
    keep_last: int = 2
    log_every: int = 1
    progress: bool = True
    tensorboard: bool = True
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    tracker_project: str = "alignkit"
    tracker_kwargs: Any = field(default_factory=dict)
    mixed_precision: str = "no"
    length_grouping: float = 0.8
    shared_prefix: bool = True
    activation_checkpointing: int = 0
    release_memory: bool = False
    cpu: bool = False
    strategy: str = "none"
    find_unused_parameters: bool = False
    fsdp: FsdpConfig = field(default_factory=FsdpConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    optimizer: Any = field(default_factory=lambda: {"_target_": "torch.optim.AdamW", "lr": 1e-5})
    scheduler: Any = field(default_factory=lambda: {"name": "constant", "warmup_steps": 0})


@dataclass
class NoneConfig:
    """An empty group option (``scorer: none``, ``loss: none``)."""

    name: str = "none"


class AlignkitSearchPath(SearchPathPlugin):
    """Appends every plugin's config dir (``register_config_dirs``) to Hydra's search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for directory, owner in get_manager().registry.config_dirs:
            search_path.append(provider=owner.name, path=directory)


_READY = False


def _store_schemas(registry: Registry) -> None:
    cs = ConfigStore.instance()
    cs.store(group="schema", name="model", node=ModelConfig)
    cs.store(group="schema", name="data", node=DataConfig)
    cs.store(group="schema", name="trainer", node=TrainerConfig)
    cs.store(group="schema", name="probe", node=ProbeConfig)
    cs.store(group="schema", name="none", node=NoneConfig)
    for group, kind in GROUP_KINDS.items():
        for entry in registry.entries(kind):
            schema = getattr(entry.spec, "schema", None)
            if schema is not None and is_dataclass(schema):
                if "name" not in {f.name for f in fields(schema)}:
                    raise ConfigError(f"{entry.owner}: schema {schema.__name__} of {group} '{entry.name}' needs a 'name: str' field")
                cs.store(group=f"schema/{group}", name=entry.name, node=schema)


def setup() -> Registry:
    """Load plugins and make Hydra see their configs and schemas (idempotent)."""
    global _READY
    registry = get_manager().registry
    if not _READY:
        if not OmegaConf.has_resolver("asset"):
            OmegaConf.register_new_resolver("asset", asset_path)
        if not OmegaConf.has_resolver("bundled"):
            OmegaConf.register_new_resolver("bundled", bundled_value)
        Plugins.instance().register(AlignkitSearchPath)
        _store_schemas(registry)
        _READY = True
    return registry


def reset() -> None:
    """Forget the setup (tests that swap plugin managers call this)."""
    global _READY
    _READY = False
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()


def explain(exc: BaseException) -> str:
    """One line for a Hydra / OmegaConf composition error."""
    from hydra.errors import MissingConfigException

    if isinstance(exc, MissingConfigException):
        missing = (exc.missing_cfg_file or "").strip("/")
        group, _, option = missing.rpartition("/")
        if group in GROUP_KINDS or group in ("model", "data", "trainer", "experiment"):
            options = sorted(set(exc.options or []))  # what has a config file: what group=<option> accepts
            singular = {"data": "data config"}.get(group, group)
            return f"unknown {singular} '{option}' ({group}={option}); available: {', '.join(options) or 'none'}"
    chain, cause = [], exc
    while cause is not None and len(chain) < 5:  # Hydra wraps the OmegaConf error that names the key
        chain.append(str(cause))
        cause = cause.__cause__
    text = "\n".join(chain)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)
    head = next((line for line in lines if not line.startswith(("full_key", "object_type", "To append", "Set the environment"))), text)
    if "Could not override" in text and "not in" in text.lower():
        bad = head.split("'")[1] if "'" in head else head
        return f"unknown config key '{bad}'; check the spelling, or add a new key with +{bad}=..."
    if key:
        reason = next((line for line in lines if "could not be converted" in line or "Value" in line), head)
        return f"config key {key}: {reason}"
    return head


def compose(overrides: list[str], *, return_hydra_config: bool = False) -> DictConfig:
    """Compose ``train.yaml`` with overrides (for validation, tests and tools); ConfigError on failure."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    setup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base=None):
            cfg = hydra_compose(CONFIG_NAME, overrides=list(overrides), return_hydra_config=return_hydra_config)
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - Hydra and OmegaConf raise many types
        raise ConfigError(explain(exc)) from exc
    finally:
        GlobalHydra.instance().clear()
    return cfg


def check_loss(cfg: DictConfig, registry: Registry) -> None:
    """The ``loss`` must be one the method takes (same ``family``), or none for a method that takes none."""
    method = registry.get("methods", cfg.method.name, where="method")
    loss = (cfg.get("loss") or {}).get("name") or "none"
    if method.loss_family is None:
        if loss != "none":
            raise ConfigError(f"method={method.name} takes no loss (loss={loss}); drop the loss= override")
        return
    family = sorted({n for e in registry.entries("losses") if e.spec.family == method.loss_family
                     for n in (e.name, *e.spec.aliases)})
    if loss == "none":
        raise ConfigError(f"method={method.name} needs a loss: loss=<one of {', '.join(family)}>")
    spec = registry.get("losses", loss, where="loss.name")
    if spec.family != method.loss_family:
        its = f"its family is '{spec.family}'" if spec.family else "it has no family"
        raise ConfigError(f"loss={loss} is not a loss of family '{method.loss_family}' ({its}); "
                          f"method={method.name} takes: {', '.join(family)}")


def validate(cfg: DictConfig) -> None:
    """Checks Hydra cannot do: group options whose ``name`` is not registered, and every interpolation."""
    registry = get_manager().registry
    for group, kind in GROUP_KINDS.items():
        node = cfg.get(group)
        if node is None or node.get("name") in (None, "none"):
            if group == "method":
                raise ConfigError("no method selected; pass method=<name> (alignkit ls methods)")
            continue
        if kind in ("methods", "rollouts", "scorers") and (kind, node.name) not in registry:
            raise UnknownNameError(kind, node.name, registry.names(kind), f"{group}.name")
    check_loss(cfg, registry)
    if cfg.get("trainer") is not None:
        from .metrics import check_trackers, tracker_names

        check_trackers(tracker_names(cfg.trainer))  # before any model loads: a missing wandb fails at once
        check_trainer(cfg.trainer)
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(explain(exc)) from exc
