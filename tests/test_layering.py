"""The layering rules, checked on the source of every module (a static tool cannot see them: ``alignkit.*``
imports resolve only through the ``package-dir`` mapping).

- a plugin never imports another plugin (each built-in plugin package is a leaf; shared code lives in core);
- core never imports a plugin (it names the built-ins only as strings, in ``BUILTIN_PLUGINS``);
- the kernels never import core (``alignkit.kernels`` stands alone);
- nothing imports a ``_private`` name of another module (or reaches one through a module attribute);
- third-party packages (``contrib/``) import no built-in plugin;
- plugins, built-in or not, import alignkit only through its public modules (:data:`PUBLIC`): the
  rest of core is internal.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from alignkit.plugin_manager import BUILTIN_PLUGINS

REPO = Path(__file__).resolve().parents[1]
ROOTS = {"core": "alignkit", "kernels": "alignkit.kernels", "plugins": "alignkit.plugins", "conf": "alignkit.conf"}
#: What plugins may import: the stable surface (alignkit.api), the shared RL math, the testing kit, the losses.
PUBLIC = ("alignkit.api", "alignkit.rl", "alignkit.testing", "alignkit.losses")


@dataclass(frozen=True)
class Violation:
    module: str
    line: int
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.rule}: {self.detail}"


def module_name(path: Path) -> str:
    """Import name of a file of the repository (``plugins/dpo/objective.py`` -> ``alignkit.plugins.dpo.objective``)."""
    rel = path.relative_to(REPO)
    if rel.parts[0] == "contrib":  # contrib/<dist>/src/<package>/...
        parts = rel.parts[rel.parts.index("src") + 1:]
        return ".".join(p.removesuffix(".py") for p in parts if p != "__init__.py")
    parts = [ROOTS[rel.parts[0]], *rel.parts[1:]]
    return ".".join(p.removesuffix(".py") for p in parts if p != "__init__.py")


def plugin_of(module: str) -> str | None:
    """The built-in plugin package a module belongs to (the longest ``BUILTIN_PLUGINS`` prefix)."""
    owners = [p for p in BUILTIN_PLUGINS if module == p or module.startswith(p + ".")]
    return max(owners, key=len) if owners else None


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(source: str, module: str, is_package: bool = False) -> list[tuple[int, str, str | None]]:
    """``(line, imported module, imported name or None)`` of every import, relative ones resolved."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            found += [(node.lineno, target, alias.name) for alias in node.names]
    return found


def _private(name: str | None) -> bool:
    return bool(name) and name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_aliases(source: str, module: str, is_package: bool) -> dict[str, str]:
    """Local names bound to alignkit modules (``from alignkit import logprobs``, ``import alignkit.x as y``)."""
    bound = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("alignkit") and alias.asname:
                    bound[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            if target.startswith("alignkit") or node.level:
                for alias in node.names:
                    bound[alias.asname or alias.name] = f"{target}.{alias.name}"
    return bound


def violations(source: str, module: str, *, is_package: bool = False, third_party: bool = False) -> list[Violation]:
    """Every layering rule ``source`` (the text of ``module``) breaks."""
    found: list[Violation] = []
    own_plugin = plugin_of(module)
    for line, target, name in imports(source, module, is_package):
        full = f"{target}.{name}" if name else target
        if full.split(".")[0] != "alignkit":
            continue
        if third_party and full.startswith("alignkit.plugins"):
            found.append(Violation(module, line, "third-party package imports a built-in plugin", full))
        elif module.startswith("alignkit.kernels") and not full.startswith("alignkit.kernels"):
            found.append(Violation(module, line, "kernels import core", full))
        elif not module.startswith(("alignkit.plugins", "alignkit.kernels")) and not third_party \
                and full.startswith("alignkit.plugins") and full != "alignkit.plugins":
            found.append(Violation(module, line, "core imports a plugin", full))
        elif own_plugin and full.startswith("alignkit.plugins.") and plugin_of(full) not in (own_plugin, None):
            found.append(Violation(module, line, "a plugin imports another plugin", f"{own_plugin} -> {plugin_of(full)}"))
        is_plugin = third_party or module.startswith("alignkit.plugins")
        if is_plugin and not full.startswith(("alignkit.plugins", *PUBLIC)) and full != "alignkit":
            found.append(Violation(module, line, "a plugin imports an internal module", full))
        if _private(name) and target != module:
            found.append(Violation(module, line, "imports a private name of another module", full))
        else:
            parts = target.split(".")
            first = next((i for i, part in enumerate(parts) if _private(part)), None)
            # A private module is private to its package: importable there, nowhere else.
            if first is not None and not module.startswith(".".join(parts[:first]) + "."):
                found.append(Violation(module, line, "imports a private module of another package", target))
    aliases = _module_aliases(source, module, is_package)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
            owner = aliases.get(node.value.id)
            if owner is not None and owner != module:
                found.append(Violation(module, node.lineno, "reaches a private name of another module",
                                       f"{owner}.{node.attr}"))
    return found


def repository_modules() -> list[tuple[Path, str, bool]]:
    files = [p for root in ("core", "kernels", "plugins", "conf") for p in sorted((REPO / root).rglob("*.py"))]
    contrib = sorted((REPO / "contrib").glob("*/src/**/*.py"))
    return [(p, module_name(p), False) for p in files] + [(p, module_name(p), True) for p in contrib]


@pytest.mark.parametrize("path, module, third_party", repository_modules(), ids=lambda v: getattr(v, "name", None))
def test_module_keeps_the_layering(path, module, third_party):
    broken = violations(path.read_text(), module, is_package=path.name == "__init__.py", third_party=third_party)
    assert not broken, "\n".join(map(str, broken))


@pytest.mark.parametrize("module, source, rule", [
    ("alignkit.plugins.ppo.objective", "from alignkit.plugins.reinforce.losses import policy_gradient",
     "a plugin imports another plugin"),
    ("alignkit.plugins.ppo.objective", "from ...plugins.dpo import losses", "a plugin imports another plugin"),
    ("alignkit.loop", "import alignkit.plugins.sft.objective", "core imports a plugin"),
    ("alignkit.loop", "from .plugins.dpo.objective import DPOObjective", "core imports a plugin"),
    ("alignkit.kernels.dispatch", "from alignkit.errors import ConfigError", "kernels import core"),
    ("alignkit.judge", "from alignkit.logprobs import _unwrap", "imports a private name of another module"),
    ("alignkit.testing", "from alignkit import plugin_manager as pm\nx = pm._MANAGER",
     "reaches a private name of another module"),
    ("alignkit_foo.objective", "from alignkit.plugins.dpo.losses import dpo", "third-party package imports a built-in plugin"),
    ("alignkit.plugins.dpo.objective", "from alignkit.loop import train", "a plugin imports an internal module"),
    ("alignkit_foo.objective", "from alignkit.logprobs import sequence_logprobs", "a plugin imports an internal module"),
])
def test_a_deliberately_bad_import_is_caught(module, source, rule):
    third_party = module.split(".")[0] != "alignkit"
    found = violations(source, module, third_party=third_party)
    assert [v.rule for v in found] == [rule], found


@pytest.mark.parametrize("module, source", [
    ("alignkit.plugins.ppo.objective", "from alignkit.rl import gae\nfrom .losses import ppo_clip"),
    ("alignkit.plugins.ppo.objective", "from alignkit.api import LossOutput, RolloutBatch"),
    ("alignkit.plugins.ppo.objective", "from alignkit.plugins.ppo.value import CRITICS"),
    ("alignkit.loop", "from .batches import select_rows\nfrom alignkit import kernels"),
    ("alignkit.kernels.autograd", "from .dispatch import resolve_backend\nfrom ._common import chunk_rows"),
    ("alignkit.plugin_manager", "BUILTIN = ('alignkit.plugins.sft',)"),
])
def test_allowed_imports_pass(module, source):
    assert violations(source, module) == []
