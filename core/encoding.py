"""How text becomes tokens for a trained artefact: saved beside its weights, reused by every consumer.

A model trained on plain text (``data.chat_template=false``), with a system prompt, or on SteerLM's
attribute-conditioned prompts reads text correctly only in that same form. So every artefact a run
writes (``final/`` and ``checkpoints/step-N/model/``) carries :data:`ENCODING_FILE`, the run's
:class:`EncodingSettings`, and every consumer encodes with them: ``scorer=reward_model``,
``alignkit eval rm|winrate|elo``, ``alignkit chat``, ``alignkit generate`` and a later run started
with ``model.path=`` (which reports, in one line, a data config that differs). An explicit option that
differs from the saved settings wins and is reported in one line. A folder without the file (an
older run, a plain Hugging Face folder) keeps each consumer's defaults. The tokenizer files are saved
beside the weights anyway; the settings add a fingerprint of the tokenizer they were used with.

The file::

    {"format": "alignkit-encoding", "version": 1, "chat_template": false, "system_prompt": null,
     "max_length": 512, "max_prompt_length": 256, "truncation": "left", "conditioning": null,
     "tokenizer": "3f2a..."}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from .errors import ModelError, UnknownNameError
from .tokenize import Encoder

ENCODING_FILE = "alignkit_encoding.json"
FORMAT = "alignkit-encoding"
VERSION = 1

#: How each setting is spelled in a run config (what reports name).
CONFIG_KEYS = {"chat_template": "data.chat_template", "system_prompt": "data.system_prompt",
               "max_length": "data.max_length", "max_prompt_length": "data.max_prompt_length",
               "truncation": "data.truncation", "conditioning": "conditioning", "tokenizer": "tokenizer"}


def report(line: str) -> None:
    """Print a one-line notice on stderr (outside a training run, where ``ctx.log`` is used)."""
    print(f"alignkit: {line}", file=sys.stderr, flush=True)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short hash of what decides tokenization: the vocabulary, BOS / EOS and the chat template."""
    payload = {"vocab": sorted(tokenizer.get_vocab().items()), "bos": getattr(tokenizer, "bos_token", None),
               "eos": getattr(tokenizer, "eos_token", None), "chat_template": getattr(tokenizer, "chat_template", None)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _shown(name: str, value: Any) -> str:
    if name == "conditioning":  # the method and its options, e.g. steerlm {"attributes": [...], ...}
        if not value:
            return "none"
        options = {k: v for k, v in (value.get("config") or {}).items() if k != "name"}
        return f"{value['method']} {json.dumps(options, sort_keys=True)}"
    if name == "tokenizer":
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class EncodingSettings:
    """Everything that changes how a record's text becomes token ids.

    Attributes:
        chat_template: render messages with the tokenizer's chat template (else plain text: contents
            joined by blank lines, the answer followed by EOS; see :class:`alignkit.tokenize.Encoder`).
        system_prompt: a system message put before every prompt (None or "" for none).
        max_length: cap on prompt + completion tokens.
        max_prompt_length: cap on prompt tokens (prompts keep their end).
        truncation: the run's ``data.truncation`` (``left`` or ``fail``). Consumers always truncate on
            the left: a prompt training would have refused is read on its end rather than failing.
        conditioning: ``{"method": name, "config": method node}`` when the method writes per-example
            values into prompts (``MethodSpec.condition``, SteerLM's attribute line), else None.
        tokenizer: :func:`tokenizer_fingerprint` of the tokenizer used (None: unknown).
    """

    chat_template: bool = True
    system_prompt: Optional[str] = None
    max_length: int = 512
    max_prompt_length: int = 256
    truncation: str = "left"
    conditioning: Optional[dict] = None
    tokenizer: Optional[str] = None

    # ------------------------------------------------------------------ building
    @classmethod
    def for_run(cls, cfg: Any, tokenizer: Any = None, registry: Any = None) -> "EncodingSettings":
        """The settings a run config trains with (``cfg.data`` and the method's conditioning)."""
        from omegaconf import OmegaConf

        data = cfg.get("data") or {}
        conditioning = None
        method = cfg.get("method")
        if method is not None and method.get("name"):
            if registry is None:
                from .plugin_manager import get_manager

                registry = get_manager().registry
            try:
                spec = registry.get("methods", method.name, where="method")
            except UnknownNameError:  # a method that is not installed conditions nothing we can replay
                spec = None
            if getattr(spec, "condition", None) is not None:
                conditioning = {"method": str(method.name), "config": OmegaConf.to_container(method, resolve=True)}
        defaults = cls()
        return cls(chat_template=bool(data.get("chat_template", defaults.chat_template)),
                   system_prompt=data.get("system_prompt") or None,
                   max_length=int(data.get("max_length", defaults.max_length)),
                   max_prompt_length=int(data.get("max_prompt_length", defaults.max_prompt_length)),
                   truncation=str(data.get("truncation", defaults.truncation)), conditioning=conditioning,
                   tokenizer=tokenizer_fingerprint(tokenizer) if tokenizer is not None else None)

    @classmethod
    def defaults(cls, tokenizer: Any, *, max_length: int, max_prompt_length: int) -> "EncodingSettings":
        """What consumers use for a folder without :data:`ENCODING_FILE`: the chat template if the
        tokenizer has one, no system prompt, no conditioning."""
        return cls(chat_template=bool(getattr(tokenizer, "chat_template", None)), system_prompt=None,
                   max_length=max_length, max_prompt_length=max_prompt_length)

    @classmethod
    def from_folder(cls, folder: str | Path) -> Optional["EncodingSettings"]:
        """The settings saved in a model folder, or None when it has no :data:`ENCODING_FILE`.

        Raises:
            ModelError: the file is unreadable or not this format.
        """
        path = Path(folder) / ENCODING_FILE
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            if raw.get("format") != FORMAT:
                raise ValueError(f"format is {raw.get('format')!r}, not {FORMAT!r}")
            names = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in raw.items() if k in names})
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise ModelError(f"{path}: not a readable alignkit encoding file ({exc}); delete it to use the "
                             "defaults or copy it again from the run that trained this model") from None

    def save(self, folder: str | Path) -> Path:
        """Write :data:`ENCODING_FILE` into ``folder`` and return its path."""
        path = Path(folder) / ENCODING_FILE
        path.write_text(json.dumps({"format": FORMAT, "version": VERSION, **dataclasses.asdict(self)}, indent=1))
        return path

    # ------------------------------------------------------------------ using
    def encoder(self, tokenizer: Any) -> Encoder:
        """An :class:`~alignkit.tokenize.Encoder` that encodes exactly like the training run (left truncation)."""
        return Encoder(tokenizer, max_length=self.max_length, max_prompt_length=self.max_prompt_length,
                       truncation="left", use_chat_template=self.chat_template, system_prompt=self.system_prompt or None)

    def differences(self, other: "EncodingSettings") -> list[str]:
        """Names of the settings that differ (``tokenizer`` only when both fingerprints are known)."""
        names = [f.name for f in dataclasses.fields(self)]
        found = []
        for name in names:
            mine, theirs = getattr(self, name), getattr(other, name)
            if name == "tokenizer" and (mine is None or theirs is None):
                continue
            if name == "system_prompt":
                mine, theirs = mine or None, theirs or None
            if mine != theirs:
                found.append(name)
        return found

    def describe(self, names: list[str]) -> str:
        """``data.chat_template=false, data.system_prompt=None``: the named settings in config terms."""
        return ", ".join(f"{CONFIG_KEYS[n]}={_shown(n, getattr(self, n))}" for n in names)

    def with_overrides(self, overrides: Mapping[str, Any], *, source: str, where: str,
                       log: Callable[[str], None] = report) -> "EncodingSettings":
        """These settings with the explicitly given ``overrides`` (None = not given) applied.

        An override that differs from a saved value is reported in one line through ``log``. When the
        two caps no longer fit (``max_prompt_length >= max_length``), an explicit ``max_length`` brings
        the prompt cap down to 3/4 of it; otherwise ``max_length`` grows to ``max_prompt_length + 1``.

        Args:
            overrides: setting name -> value (``system_prompt``, ``chat_template``, ``max_length``,
                ``max_prompt_length``); None entries are ignored.
            source: how the user spelled them, e.g. ``"alignkit eval rm"`` or ``"scorer"``.
            where: the model folder the saved settings came from.
            log: where the report goes.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        updated = dataclasses.replace(self, **given)
        if updated.max_prompt_length >= updated.max_length:
            if "max_length" in given:
                updated = dataclasses.replace(updated, max_prompt_length=updated.max_length * 3 // 4)
            else:
                updated = dataclasses.replace(updated, max_length=updated.max_prompt_length + 1)
        changed = [name for name in updated.differences(self) if name in given]
        if changed:
            verb = "differs" if len(changed) == 1 else "differ"
            log(f"{source}: {updated.describe(changed)} {verb} from the encoding {where} was trained with "
                f"({self.describe(changed)}); using the explicit value{'s' if len(changed) > 1 else ''}")
        return updated


def prompt_encoding(tokenizer: Any, saved: EncodingSettings | None, max_prompt_length: int | None = None, *,
                    default_cap: int, where: str, source: str, log: Callable[[str], None] = report) -> EncodingSettings:
    """How a consumer that only encodes prompts (generation) encodes them for one model.

    Args:
        tokenizer: the model's tokenizer.
        saved: its saved settings, or None (then: the chat template if the tokenizer has one, no
            system prompt, no conditioning).
        max_prompt_length: an explicit prompt cap, or None for the saved one (``default_cap`` when
            nothing was saved). An explicit cap that differs from the saved one is reported.
        default_cap: the cap when neither is given.
        where: the model, as a report names it.
        source: the option, as a report names it (``--max-prompt-length 600``).
        log: where a report goes.
    """
    if saved is None:
        cap = max_prompt_length or default_cap
        return EncodingSettings.defaults(tokenizer, max_length=cap + 1, max_prompt_length=cap)
    return saved.with_overrides({"max_prompt_length": max_prompt_length}, source=source, where=where, log=log)


def model_folder_of(name: str | Path) -> Path | None:
    """The weights folder ``name`` loads from (a run, a checkpoint, a HF folder), or None for
    ``smollm2`` / ``tiny`` / a file of answers."""
    if str(name) in ("smollm2", "tiny") or Path(name).is_file():
        return None
    from .models import find_model_folder

    try:
        return find_model_folder(name, "--model")
    except ModelError:
        return None


def saved_encoding(name: str | Path) -> EncodingSettings | None:
    """The settings saved with model ``name`` (see :func:`model_folder_of`), or None."""
    folder = model_folder_of(name)
    return EncodingSettings.from_folder(folder) if folder is not None else None


def report_start_model(ctx: Any) -> list[str]:
    """Report, in one line, how this run's encoding differs from that of the model it starts from.

    A run whose ``model.path`` holds :data:`ENCODING_FILE` (a later stage, fine-tuning a trained model)
    and whose data config encodes differently (chat template, system prompt, lengths, truncation,
    conditioning, tokenizer) gets one line through ``ctx.log``: not an error, the new run may mean it.

    Returns:
        The names of the settings that differ (empty when none do or nothing was saved).
    """
    path = ctx.cfg.model.get("path") if ctx.cfg.get("model") is not None else None
    if not path:
        return []
    folder = model_folder_of(path)
    saved = EncodingSettings.from_folder(folder) if folder is not None else None
    if saved is None:
        return []
    run = EncodingSettings.for_run(ctx.cfg, ctx.tokenizer, ctx.registry)
    changed = run.differences(saved)
    if changed:
        ctx.log(f"encoding: model.path={path} was trained with {saved.describe(changed)}; this run encodes with "
                f"{run.describe(changed)} (reported, not an error: the model now reads text in another form)")
    return changed
