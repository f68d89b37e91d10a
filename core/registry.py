"""The registry: every name a plugin registered, with the plugin that owns it.

One table per kind (``methods``, ``losses``, ``rollouts``, ``scorers``, ``data_formats``,
``commands``). A second registration of the same name raises, naming both owners, because pluggy
itself would let the last one win silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from .errors import DuplicateNameError, UnknownNameError, singular
from .specs import SPEC_TYPES

KINDS = tuple(SPEC_TYPES)


@dataclass(frozen=True)
class PluginInfo:
    """Who registered something: the plugin's name, its distribution and version."""

    name: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"{self.name} ({self.distribution} {self.version})"


@dataclass(frozen=True)
class Entry:
    """One registered spec and its owner."""

    spec: Any
    owner: PluginInfo

    @property
    def name(self) -> str:
        return self.spec.name


class Registry:
    """Name -> spec tables, one per kind, with owners."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self.config_dirs: list[tuple[str, PluginInfo]] = []

    def add(self, spec: Any, owner: PluginInfo) -> None:
        kind = getattr(spec, "KIND", None)
        if kind not in self._tables:
            raise TypeError(f"{owner}: cannot register {spec!r}; expected one of {[t.__name__ for t in SPEC_TYPES.values()]}")
        table = self._tables[kind]
        if spec.name in table:
            first = table[spec.name].owner
            raise DuplicateNameError(
                f"{singular(kind)} '{spec.name}' is registered twice: by {first} and by {owner}; "
                f"disable one with ALIGNKIT_DISABLE_PLUGINS={owner.name}"
            )
        table[spec.name] = Entry(spec, owner)

    def get(self, kind: str, name: str, where: str = "") -> Any:
        """The spec registered as ``name``; ``UnknownNameError`` listing the valid names otherwise."""
        try:
            return self._tables[kind][name].spec
        except KeyError:
            raise UnknownNameError(kind, name, list(self._tables[kind]), where) from None

    def remove(self, kind: str, name: str) -> None:
        """Forget ``name`` (a spec whose requirements are missing)."""
        del self._tables[kind][name]

    def owner(self, kind: str, name: str) -> PluginInfo:
        return self._tables[kind][name].owner

    def names(self, kind: str) -> list[str]:
        return sorted(self._tables[kind])

    def entries(self, kind: str) -> Iterator[Entry]:
        for name in sorted(self._tables[kind]):
            yield self._tables[kind][name]

    def __contains__(self, item: tuple[str, str]) -> bool:
        kind, name = item
        return name in self._tables.get(kind, {})
