"""Finding, loading and isolating plugins (pluggy + the ``alignkit`` entry-point group).

Load order: built-ins (the explicit :data:`BUILTIN_PLUGINS` tuple, like pytest's default plugins),
then objects registered in-process (tests), then installed entry points in name order. Each plugin's
hooks are called one plugin at a time, so a plugin that fails on import or inside a hook is reported
and skipped as a whole while the others keep working.

Environment:
    ALIGNKIT_PLUGINS: comma-separated allow-list of third-party plugins (entry-point or distribution
        names). Unset: all installed plugins load. Set but empty: built-ins only.
    ALIGNKIT_DISABLE_PLUGINS: comma-separated deny-list (entry-point, distribution or built-in names,
        e.g. ``alignkit-simpo`` or ``alignkit.plugins.ppo``).
    ALIGNKIT_TRACE_PLUGINS: ``1`` prints every hook call and what it registered to stderr.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import sys
import traceback
import warnings
from dataclasses import dataclass
from typing import Any, Iterable

import pluggy

from . import __version__, hookspecs
from .errors import DuplicateNameError
from .registry import PluginInfo, Registry

ENTRY_POINT_GROUP = hookspecs.PROJECT

BUILTIN_PLUGINS: tuple[str, ...] = (
    "alignkit.plugins.formats",
    "alignkit.plugins.rollouts.dataset",
    "alignkit.plugins.rollouts.generate",
    "alignkit.plugins.engines",
    "alignkit.plugins.corrections",
    "alignkit.plugins.scorers",
    "alignkit.plugins.advantages",
    "alignkit.plugins.sft",
    "alignkit.plugins.dpo",
    "alignkit.plugins.reward_model",
    "alignkit.plugins.ppo",
    "alignkit.plugins.reinforce",
    "alignkit.plugins.grpo",
    "alignkit.plugins.commands.plot",
    "alignkit.plugins.commands.evaluate",
    "alignkit.plugins.commands.data",
    "alignkit.plugins.rollouts.cai",
    "alignkit.plugins.steerlm",
)

# Hooks whose ``register`` callback receives specs; ``register_config_dirs`` returns instead.
_REGISTER_HOOKS = tuple(h for h in hookspecs.HOOK_NAMES if h != "register_config_dirs")


@dataclass
class PluginFailure:
    """A plugin that was skipped, and why."""

    name: str
    distribution: str
    version: str
    stage: str  # "import" or the hook name
    error: str

    def __str__(self) -> str:
        return f"plugin {self.name} ({self.distribution} {self.version}) failed in {self.stage}: {self.error}"


def _env_list(name: str) -> list[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


class PluginManager:
    """Loads plugins once and fills a :class:`Registry` from their hooks.

    Args:
        builtins: module names of the built-in plugins.
        entry_points: entry points to consider (default: the installed ``alignkit`` group).
        extra: ``(name, plugin_object)`` pairs registered in-process, after the built-ins.
    """

    def __init__(
        self,
        builtins: Iterable[str] = BUILTIN_PLUGINS,
        entry_points: Iterable[md.EntryPoint] | None = None,
        extra: Iterable[tuple[str, Any]] = (),
    ) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.failures: list[PluginFailure] = []
        self.infos: dict[str, PluginInfo] = {}
        self._builtins = tuple(builtins)
        self._entry_points = entry_points
        self._extra = tuple(extra)
        self._trace = os.environ.get("ALIGNKIT_TRACE_PLUGINS", "") not in ("", "0")
        self._loaded = False

    # ----------------------------------------------------------------- loading
    def load(self) -> "PluginManager":
        if self._loaded:
            return self
        self._loaded = True
        allow = _env_list("ALIGNKIT_PLUGINS")
        deny = set(_env_list("ALIGNKIT_DISABLE_PLUGINS") or [])
        for module_name in self._builtins:
            if module_name in deny or module_name.rsplit(".", 1)[-1] in deny:
                continue
            self._load_one(module_name, lambda m=module_name: importlib.import_module(m), "alignkit", __version__)
        for name, obj in self._extra:
            if name not in deny:
                self._load_one(name, lambda o=obj: o, "(in-process)", "-")
        eps = self._entry_points if self._entry_points is not None else md.entry_points(group=ENTRY_POINT_GROUP)
        for ep in sorted(eps, key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            dist_name = dist.name if dist is not None else ep.name
            version = dist.version if dist is not None else "?"
            names = {ep.name, dist_name}
            if names & deny or (allow is not None and not names & set(allow)):
                continue
            self._load_one(ep.name, ep.load, dist_name, version)
        self._collect()
        self._check_requirements()
        return self

    def _check_requirements(self) -> None:
        """Drop (and report) every spec that needs a registered name that is not there (disabled, failed)."""
        for kind in list(self.registry._tables):
            for entry in list(self.registry.entries(kind)):
                missing = [r for r in getattr(entry.spec, "requires", ()) if tuple(r.split(":", 1)) not in self.registry]
                if missing:
                    self.registry.remove(kind, entry.name)
                    error = LookupError(f"{kind[:-1]} '{entry.name}' requires {', '.join(missing)}, which no loaded "
                                        "plugin registers (disabled or failed?)")
                    self._fail(entry.owner, "requires", error)

    def _load_one(self, name: str, loader: Any, distribution: str, version: str) -> None:
        info = PluginInfo(name, distribution, version)
        try:
            plugin = loader()
            if name in self.infos:
                raise DuplicateNameError(f"plugin name '{name}' is used twice: by {self.infos[name]} and by {info}")
            self.pm.register(plugin, name=name)
        except DuplicateNameError:
            raise
        except BaseException as exc:  # noqa: BLE001 - a broken plugin must not take the others down
            if isinstance(exc, KeyboardInterrupt):
                raise
            self._fail(info, "import", exc)
            return
        self.infos[name] = info

    def _fail(self, info: PluginInfo, stage: str, exc: BaseException) -> None:
        message = f"{type(exc).__name__}: {exc}".strip()
        failure = PluginFailure(info.name, info.distribution, info.version, stage, message.splitlines()[0] if message else "")
        self.failures.append(failure)
        if os.environ.get("ALIGNKIT_DEBUG"):
            traceback.print_exception(exc)
        warnings.warn(f"alignkit: {failure}; skipped", RuntimeWarning, stacklevel=3)

    def _collect(self) -> None:
        """Call each plugin's hooks on its own; commit its registrations only if all succeed."""
        for name, info in list(self.infos.items()):
            plugin = self.pm.get_plugin(name)
            staged: list[Any] = []
            config_dirs: list[str] = []
            stage = "hooks"
            try:
                for stage in _REGISTER_HOOKS:
                    if self.pm.parse_hookimpl_opts(plugin, stage) is None:
                        continue
                    before = len(staged)
                    getattr(plugin, stage)(register=staged.append)
                    self._log(name, stage, staged[before:])
                stage = "register_config_dirs"
                if self.pm.parse_hookimpl_opts(plugin, stage) is not None:
                    result = plugin.register_config_dirs()
                    config_dirs = [result] if isinstance(result, str) else list(result or [])
                    self._log(name, stage, config_dirs)
            except Exception as exc:  # noqa: BLE001 - isolate the faulty plugin
                self._fail(info, stage, exc)
                self.pm.unregister(name=name)
                del self.infos[name]
                continue
            for spec in staged:
                self.registry.add(spec, info)
            self.registry.config_dirs.extend((d, info) for d in config_dirs)

    def _log(self, plugin: str, hook: str, items: list[Any]) -> None:
        if self._trace:
            names = [getattr(item, "name", item) for item in items]
            print(f"[alignkit trace] {plugin}.{hook} -> {names}", file=sys.stderr)

    # ----------------------------------------------------------------- reporting
    def report(self) -> dict[str, Any]:
        """What ``alignkit plugins`` prints: every plugin, what it registered, every failure."""
        plugins = []
        for name, info in self.infos.items():
            registered: dict[str, list[str]] = {}
            for kind in self.registry._tables:
                owned = [e.name for e in self.registry.entries(kind) if e.owner == info]
                if owned:
                    registered[kind] = owned
            dirs = [d for d, owner in self.registry.config_dirs if owner == info]
            if dirs:
                registered["config_dirs"] = dirs
            plugins.append({"name": name, "distribution": info.distribution, "version": info.version,
                            "registered": registered})
        return {"plugins": plugins, "failures": [vars(f) for f in self.failures]}


_MANAGER: PluginManager | None = None


def get_manager() -> PluginManager:
    """The process-wide, loaded plugin manager."""
    global _MANAGER
    if _MANAGER is None:
        _MANAGER = PluginManager().load()
    return _MANAGER


def current_manager() -> PluginManager | None:
    """The process-wide manager as it is, without loading one (None if none is loaded yet)."""
    return _MANAGER


def get_registry() -> Registry:
    return get_manager().registry


def set_manager(manager: PluginManager | None) -> None:
    """Replace the process-wide manager (tests, embedding); ``None`` forces a reload on next use."""
    global _MANAGER
    _MANAGER = manager

