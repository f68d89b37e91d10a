"""The answer probe: the policy answers fixed ordinary prompts before and after training.

A held-out loss can improve while the model gets worse at what a user tries next (SFT on evasive
answers lowers their NLL and teaches evasion). With ``probe=everyday`` (the bundled 40 everyday
prompts) or ``probe.prompts=<file>``, the run's policy answers every prompt greedily before the
first step and after the last, encoded the way the run trains (chat template, system prompt); the
answers are measured for refusals, loops and answers cut at the limit (:mod:`alignkit.answer_quality`,
rates with Wilson 95% intervals), written to ``<run>/probe/{before,after}.jsonl``, logged
(``metrics.jsonl`` split ``probe``) and kept in ``summary.json``; the run's last lines show the
measures side by side and a few prompts' answers before and after.

The probe decodes without the repetition guard (``chat`` and ``generate`` stop loops by default): it
is there to see loops. It draws nothing from the training stream (greedy decoding).
"""

from __future__ import annotations

import json
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

from . import answer_quality
from .data import load_records
from .distributed import generate as generate_from_policy
from .encoding import EncodingSettings
from .generation import SamplingSettings, end_token_ids, sample
from .records import last_user_text

#: Folder of a run that holds the probe's answers.
PROBE_DIR = "probe"


@dataclass
class ProbeConfig:
    """The ``probe`` config group: answers to fixed prompts before and after training.

    Attributes:
        name: the option (``none``: no probe; ``everyday``: the bundled everyday prompts).
        prompts: a prompts file (any data format that gives prompts, e.g. ``{"prompt": ...}`` rows);
            null: no probe.
        max_new_tokens: cap on each answer (greedy; an answer that loops runs to it, so loops show).
        batch_size: prompts per ``generate`` call.
        show: prompts whose before/after answers the run's last lines print (the first ones).
    """

    name: str = "none"
    prompts: Optional[str] = None
    max_new_tokens: int = 128
    batch_size: int = 8
    show: int = 3


@dataclass
class ProbeResult:
    """One probe's answers (rows: ``prompt``, ``answer``, ``finish_reason``, ``refusal``, ``looping``,
    ``repeated_4gram_share``) and their :func:`alignkit.answer_quality.summarize`."""

    answers: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)


class AnswerProbe:
    """Greedy answers of a policy to the prompts of ``cfg.probe.prompts``, measured.

    Raises (at construction): DataError for a missing or malformed prompts file.
    """

    def __init__(self, cfg: Any, tokenizer: Any, registry: Any, accelerator: Any) -> None:
        self.cfg, self.tokenizer, self.accelerator = cfg.probe, tokenizer, accelerator
        records = load_records(SimpleNamespace(format="auto"), "prompts", registry, path=str(cfg.probe.prompts),
                               key="probe.prompts")
        self.prompts = [r["prompt"] for r in records]  # chat messages
        encoder = EncodingSettings.for_run(cfg, tokenizer, registry).encoder(tokenizer)
        self.rows = [encoder.prompt_ids(p, "probe.prompts") for p in self.prompts]
        self.settings = SamplingSettings(max_new_tokens=int(cfg.probe.max_new_tokens), greedy=True)

    def __call__(self, policy: Any, progress: Any = None) -> ProbeResult:
        """Answer every prompt with ``policy`` (a prepared, possibly sharded policy: every process calls it)."""
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        end_ids = end_token_ids(self.tokenizer, policy)
        size = max(1, int(self.cfg.batch_size))
        starts = range(0, len(self.rows), size)
        completions = []
        for start in (progress(starts, desc="probe", total=len(starts), unit="batch", leave=False) if progress else starts):
            completions += sample(policy, self.rows[start:start + size], self.settings, end_ids=end_ids, pad_id=pad_id,
                                  tokenizer=self.tokenizer, device=self.accelerator.device,
                                  generate=lambda **kwargs: generate_from_policy(policy, self.accelerator, **kwargs))
        texts = [c.text.strip() for c in completions]
        answers = [{"prompt": last_user_text(p), "answer": t, "finish_reason": c.finish_reason,
                    "refusal": answer_quality.is_refusal(t), "looping": answer_quality.is_looping(t),
                    "repeated_4gram_share": answer_quality.repeated_ngram_share(answer_quality.words(t))}
                   for p, t, c in zip(self.prompts, texts, completions)]
        return ProbeResult(answers, answer_quality.summarize(texts, [c.ended for c in completions]))


def write(run_dir: Path, label: str, result: ProbeResult) -> Path:
    """``<run>/probe/<label>.jsonl``, written atomically."""
    folder = Path(run_dir) / PROBE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path, tmp = folder / f"{label}.jsonl", folder / f".{label}.jsonl.tmp"
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in result.answers))
    os.replace(tmp, path)
    return path


def read(run_dir: Path, label: str, summary: dict[str, float]) -> ProbeResult:
    """The probe ``label`` of a run (answers from its JSONL, when written), with ``summary``."""
    path = Path(run_dir) / PROBE_DIR / f"{label}.jsonl"
    answers = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return ProbeResult(answers, dict(summary))


#: The per-answer measures the probe compares before and after: (label in the report, value of a row).
MEASURES: dict[str, Any] = {
    "refusal": lambda row: float(row["refusal"]), "looping": lambda row: float(row["looping"]),
    "cut": lambda row: float(row["finish_reason"] == "length"),
    "repeated_4gram_share": lambda row: float(row["repeated_4gram_share"]),
}


def changes(before: ProbeResult, after: ProbeResult) -> dict[str, float]:
    """Per measure, the paired change after − before over the same prompts with its 95% interval
    (:func:`alignkit.answer_quality.paired_change`): ``<measure>_change``, ``_change_ci_low``, ``_change_ci_high``.
    Empty when the two probes did not answer the same prompts."""
    if len(before.answers) != len(after.answers) or len(after.answers) < 2 or \
            [r["prompt"] for r in before.answers] != [r["prompt"] for r in after.answers]:
        return {}
    out: dict[str, float] = {}
    for key, value in MEASURES.items():
        mean, low, high = answer_quality.paired_change([value(r) for r in before.answers],
                                                       [value(r) for r in after.answers])
        out.update({f"{key}_change": mean, f"{key}_change_ci_low": low, f"{key}_change_ci_high": high})
    return out


def _change(change: dict[str, float], key: str) -> str:
    if not change:
        return ""
    return (f"{change[f'{key}_change']:+.1%} [{change[f'{key}_change_ci_low']:+.1%}, "
            f"{change[f'{key}_change_ci_high']:+.1%}]")


def _rate(summary: dict[str, float], key: str) -> str:
    n = int(summary["answers"])
    hits = round(summary[f"{key}_rate"] * n)
    return (f"{hits:>2}/{n} {summary[f'{key}_rate']:4.0%} "
            f"[{summary[f'{key}_ci_low']:.0%}, {summary[f'{key}_ci_high']:.0%}]")


def _share(summary: dict[str, float]) -> str:
    key = "repeated_4gram_share"
    return f"{summary[key]:5.1%} [{summary[f'{key}_ci_low']:.1%}, {summary[f'{key}_ci_high']:.1%}]"


def report(before: ProbeResult, after: ProbeResult, cfg: Any, run_dir: Path) -> list[str]:
    """The run's last lines about the probe: the measures before/after (95% intervals) and ``cfg.show`` answers."""
    if not after.summary or not before.summary:
        return []
    change = changes(before, after)
    rows = [("refusals", lambda s: _rate(s, "refusal"), "refusal"),
            ("looping answers", lambda s: _rate(s, "looping"), "looping"),
            (f"cut at {cfg.max_new_tokens} tokens", lambda s: _rate(s, "cut"), "cut"),
            ("repeated 4-grams", _share, "repeated_4gram_share"),
            ("words per answer", lambda s: f"{s['words']:5.1f}", None)]
    lines = [f"  answers to {int(after.summary['answers'])} ordinary prompts (probe={cfg.name}, greedy, "
             f"<= {cfg.max_new_tokens} new tokens; 95% intervals; all in {Path(run_dir) / PROBE_DIR}/):",
             f"    {'':20} {'before':24} {'after':24} {'change (paired)' if change else ''}".rstrip()]
    lines += [f"    {label:20} {fmt(before.summary):24} {fmt(after.summary):24} {_change(change, key) if key else ''}".rstrip()
              for label, fmt, key in rows]
    for old, new in list(zip(before.answers, after.answers))[: int(cfg.show)]:
        lines.append(f"    > {old['prompt']}")
        for label, row in (("before", old), ("after", new)):
            text = " ".join(row["answer"].split()) or "(empty)"
            lines.append(f"      {label + ':':7} " + textwrap.shorten(text, width=150, placeholder=" ..."))
    return lines
