"""Constitution files: the principles that steer critique, revision and AI preference labels.

A constitution is a YAML file (Bai et al. 2022, "Constitutional AI: Harmlessness from AI Feedback",
https://arxiv.org/abs/2212.08073)::

    name: my-constitution            # optional label, recorded in generated data
    principles:                      # supervised stage: one is sampled per critique -> revision round
      - name: harm                   # optional; defaults to "principle_<i>"
        critique: <critique request> # asked about the model's last answer
        revision: <revision request> # asked next, so that the model rewrites it
    preference_principles:           # RL stage: one or more sampled per pair, labels averaged
      - name: less_harmful
        text: <question comparing two answers>

alignkit ships its own default (``constitutions/default.yaml``, ``constitution: default``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from alignkit.api import ConfigError

DEFAULT = Path(__file__).parent / "constitutions" / "default.yaml"


@dataclass(frozen=True)
class Principle:
    """A critique request and the matching revision request (supervised stage)."""

    name: str
    critique: str
    revision: str


@dataclass(frozen=True)
class PreferencePrinciple:
    """A question asking which of two answers is better in one respect (RL stage)."""

    name: str
    text: str


@dataclass(frozen=True)
class Constitution:
    """The parsed constitution file.

    Attributes:
        name: a label recorded in generated data.
        principles: critique / revision pairs, sampled per round.
        preference_principles: comparison questions, sampled per labelled pair.
        source: the file it was read from.
    """

    name: str
    principles: tuple[Principle, ...]
    preference_principles: tuple[PreferencePrinciple, ...]
    source: str = ""

    def fingerprint(self) -> str:
        """A short hash of the principles: generated data records it to refuse mixing constitutions."""
        payload = json.dumps({"p": [asdict(p) for p in self.principles],
                              "q": [asdict(q) for q in self.preference_principles]}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _text(entry: dict, key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: '{key}' must be a non-empty string")
    return " ".join(value.split())


def parse_constitution(data: Any, source: str = "<constitution>") -> Constitution:
    """Validate a loaded YAML mapping; ConfigError naming the file and entry on any problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a constitution must be a mapping with 'principles' and 'preference_principles'")
    unknown = sorted(set(data) - {"name", "version", "principles", "preference_principles"})
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; expected name, version, principles, preference_principles")
    principles, preferences = [], []
    raw = data.get("principles")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{source}: 'principles' must be a non-empty list of {{critique, revision}} entries")
    for i, entry in enumerate(raw):
        where = f"{source}: principles[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a mapping with 'critique' and 'revision'")
        principles.append(Principle(name=str(entry.get("name") or f"principle_{i}"),
                                    critique=_text(entry, "critique", where), revision=_text(entry, "revision", where)))
    raw = data.get("preference_principles")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{source}: 'preference_principles' must be a non-empty list of {{text}} entries")
    for i, entry in enumerate(raw):
        where = f"{source}: preference_principles[{i}]"
        if isinstance(entry, str):
            entry = {"text": entry}
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a mapping with 'text' (or a plain string)")
        preferences.append(PreferencePrinciple(name=str(entry.get("name") or f"preference_{i}"),
                                               text=_text(entry, "text", where)))
    for kind, items in (("principles", principles), ("preference_principles", preferences)):
        names = [p.name for p in items]
        if len(set(names)) != len(names):
            raise ConfigError(f"{source}: duplicate names in '{kind}': {sorted({n for n in names if names.count(n) > 1})}")
    return Constitution(name=str(data.get("name") or Path(source).stem), principles=tuple(principles),
                        preference_principles=tuple(preferences), source=source)


def load_constitution(path: str | None) -> Constitution:
    """The constitution at ``path``; ``None`` or ``"default"`` gives alignkit's own."""
    file = DEFAULT if path in (None, "", "default") else Path(str(path)).expanduser()
    if not file.is_file():
        raise ConfigError(f"constitution={path}: no such file (pass a YAML file or 'default')")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{file}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    return parse_constitution(data, str(file))
