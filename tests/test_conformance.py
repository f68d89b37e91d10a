"""The plugin conformance kit (``alignkit.testing``): every registered method passes ``check_method``,
and the kit catches each way a plugin can break the contract.

The method list is read from the registry when the tests are collected (what ``alignkit ls methods``
prints), so a new built-in method, or an installed third-party one, is covered without editing this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from alignkit.hookspecs import hookimpl
from alignkit.interfaces import LossOutput, Mean
from alignkit.logprobs import sequence_logprobs
from alignkit.plugin_manager import get_registry
from alignkit.specs import MethodSpec, ScorerSpec
from alignkit.testing import ConformanceError, check_method, check_scorer, synthetic_rows


def registered_methods() -> list[str]:
    return get_registry().names("methods")


# Methods known not to conform yet, each with the reason (strict xfail: fixing one makes this fail).
KNOWN_FAILURES: dict[str, str] = {}


def conformance_params() -> list:
    return [pytest.param(m, marks=pytest.mark.xfail(reason=KNOWN_FAILURES[m], raises=ConformanceError, strict=True))
            if m in KNOWN_FAILURES else m for m in registered_methods()]


@pytest.mark.parametrize("method", conformance_params())
def test_registered_method_conforms(method, tmp_path):
    report = check_method(method, tmp_path=tmp_path)
    assert report["checks"] == ["registered", "composes", "loss", "trains", "resumes", "dropout-free", "accumulates"]
    assert len(report["losses"]) == 2


def test_ls_methods_lists_what_is_checked(cli):
    result = cli("ls", "methods")
    assert result.returncode == 0, result
    listed = [line.split()[0] for line in result.stdout.splitlines()[1:] if line.strip()]
    assert listed == registered_methods()


# ----------------------------------------------------------------------------- a toy plugin, broken on purpose
@dataclass
class ToyConfig:
    name: str = "toy"
    scale: float = 1.0


class ToyObjective:
    """Token-mean NLL; ``mode`` breaks it in one way."""

    def __init__(self, ctx, mode: str) -> None:
        self.ctx, self.mode, self.calls = ctx, mode, 0
        if mode == "dropout":  # turns dropout back on in the policy it was given
            ctx.policy.config.attention_dropout = 0.5
            for module in ctx.policy.modules():
                if hasattr(module, "attention_dropout"):
                    module.attention_dropout = 0.5

    def weight(self, batch):
        tokens = float((batch.labels[:, 1:] != -100).sum())
        if self.mode == "composite":  # a token mean plus a sequence mean, both counted in sequences
            return float(batch.input_ids.shape[0])
        if self.mode == "composite_ok":
            return {"nll": tokens, "sequence_nll": float(batch.input_ids.shape[0])}
        return tokens

    def __call__(self, batch):
        stats = sequence_logprobs(self.ctx.policy, batch)
        loss = -stats.sum.sum() / stats.count.sum().clamp_min(1) * float(self.ctx.cfg.method.scale)
        self.calls += 1
        if self.mode == "nan":
            loss = loss * float("nan")
        elif self.mode == "detached":
            loss = loss.detach()
        elif self.mode == "stateful":  # state that changes the update but is not checkpointed
            loss = loss if self.calls % 2 else -loss
        elif self.mode in ("composite", "composite_ok"):
            sequence_nll = (-stats.sum / stats.count.clamp_min(1)).mean()  # a mean over sequences
            if self.mode == "composite_ok":
                return LossOutput(terms={"nll": loss, "sequence_nll": sequence_nll})
            loss = loss + sequence_nll
        elif self.mode in ("row_metric", "row_metric_ok"):  # a per-sequence mean beside a token-mean loss
            lengths = stats.count.float()  # (B,) target tokens per sequence
            value = lengths.mean()
            return LossOutput(loss, {"length": value if self.mode == "row_metric" else Mean(value, lengths.numel())})
        return LossOutput(loss, {})


YAML = """# @package _global_
defaults:
{schema}  - override /rollout: dataset
  - _self_
method:
  name: {name}
"""


def toy_plugin(tmp_path: Path, mode: str = "ok", *, name: str = "toy", schema: bool = True,
               yaml: bool = True, extra_files: dict[str, str] | None = None):
    conf = tmp_path / f"conf_{mode}"
    if yaml:
        (conf / "method").mkdir(parents=True, exist_ok=True)
        line = f"  - /schema/method/{name}@method\n" if schema else ""
        (conf / "method" / f"{name}.yaml").write_text(YAML.format(schema=line, name=name))
    for rel, text in (extra_files or {}).items():
        (conf / rel).parent.mkdir(parents=True, exist_ok=True)
        (conf / rel).write_text(text)

    class Toy:
        @hookimpl
        def register_methods(self, register):
            register(MethodSpec(name=name, build=lambda ctx: ToyObjective(ctx, mode), consumes="tokens",
                                schema=ToyConfig))

        @hookimpl
        def register_config_dirs(self):
            return f"file://{conf}"

    return (f"toy-{mode}", Toy())


def test_a_correct_toy_plugin_conforms(alignkit_plugins, tmp_path):
    alignkit_plugins(toy_plugin(tmp_path))
    report = check_method("toy", "method.scale=0.5", tmp_path=tmp_path)
    assert report["owner"].startswith("toy-ok") and report["kind"] == "tokens"


def test_a_composite_loss_with_units_per_term_conforms(alignkit_plugins, tmp_path):
    alignkit_plugins(toy_plugin(tmp_path, "composite_ok"))
    report = check_method("toy", tmp_path=tmp_path, resume=False, steps=1)
    assert "accumulates" in report["checks"]


@pytest.mark.parametrize("mode, kwargs, expected", [
    ("nan", {}, "check_method('toy'): loss: loss is nan on the first batch"),
    ("detached", {}, "loss: loss does not require grad"),
    ("noyaml", {"yaml": False}, "config file: no method/toy.yaml in any config dir"),
    ("noschema", {"schema": False}, "composes: cfg.method is dict, not the schema ToyConfig"),
    ("clash", {"extra_files": {"method/sft.yaml": YAML.format(schema="", name="sft")}},
     "names do not collide: method/sft.yaml is shipped by alignkit.plugins.sft (alignkit 0.1.0) and by toy-clash"),
    ("stateful", {}, "resumes: weights after resuming differ"),
    ("composite", {}, "accumulates: batch 4 x accumulation 1 and batch 1 x accumulation 4 give updates that differ"),
    ("dropout", {}, "dropout-free: on a model whose config enables dropout, the first loss is"),
    ("row_metric", {}, "accumulates: batch 4 x accumulation 1 and batch 1 x accumulation 4 log different step "
                       "metrics (length "),
])
def test_check_method_names_what_is_broken(alignkit_plugins, tmp_path, mode, kwargs, expected):
    alignkit_plugins(toy_plugin(tmp_path, mode, **kwargs))
    with pytest.raises(ConformanceError) as info:
        check_method("toy", tmp_path=tmp_path, steps=2)
    assert expected in str(info.value)


def test_a_metric_that_says_its_unit_conforms(alignkit_plugins, tmp_path):
    """The per-sequence mean of ``row_metric``, declared as ``Mean(value, sequences)``, logs the same
    figure whatever the split (``row_metric`` itself is caught above)."""
    alignkit_plugins(toy_plugin(tmp_path, "row_metric_ok"))
    report = check_method("toy", tmp_path=tmp_path, resume=False, steps=1)
    assert "accumulates" in report["checks"]


def test_unknown_method(alignkit_plugins):
    alignkit_plugins()
    with pytest.raises(ConformanceError, match=r"registered: no method 'nope' \(registered: .*sft"):
        check_method("nope")


def test_duplicate_method_names_fail_naming_both_owners(alignkit_plugins, tmp_path):
    from alignkit.errors import DuplicateNameError

    with pytest.raises(DuplicateNameError, match=r"method 'sft' is registered twice: by alignkit.plugins.sft .* and by toy-ok"):
        alignkit_plugins(toy_plugin(tmp_path, name="sft"))


# ----------------------------------------------------------------------------- the other fixtures
def test_plugin_session_restores_the_previous_manager(tmp_path):
    import alignkit.plugin_manager as pm
    from alignkit.testing import plugin_session

    before = pm.get_manager()
    with plugin_session() as use:
        use(toy_plugin(tmp_path))
        assert "toy" in pm.get_registry().names("methods")
    assert pm.get_manager() is before and "toy" not in pm.get_registry().names("methods")


@pytest.mark.parametrize("kind", ["tokens", "pairs", "ranked", "prompts"])
def test_synthetic_data_loads_as_its_kind(alignkit_data, alignkit_compose, kind):
    from alignkit.data import split_records

    cfg = alignkit_compose("method=sft", *alignkit_data(kind))
    train, held_out = split_records(cfg.data, get_registry(), kind, seed=0)
    assert (len(train), len(held_out)) == (12, 4)
    assert len(synthetic_rows(kind, 3)) == 3


def test_check_scorer_on_an_in_process_scorer(alignkit_plugins, tmp_path):
    @dataclass
    class LengthConfig:
        name: str = "length"

    (tmp_path / "conf" / "scorer").mkdir(parents=True)
    (tmp_path / "conf" / "scorer" / "length.yaml").write_text(
        "defaults:\n  - /schema/scorer/length@_here_\n  - _self_\nname: length\n")

    class Plugin:
        @hookimpl
        def register_scorers(self, register):
            register(ScorerSpec(name="length", schema=LengthConfig,
                                build=lambda ctx, cfg: lambda batch: torch.tensor([float(len(c)) for c in batch.completions])))

        @hookimpl
        def register_config_dirs(self):
            return f"file://{tmp_path / 'conf'}"

    alignkit_plugins(("length-scorer", Plugin()))
    rewards = check_scorer("length")
    assert rewards.shape == (4,) and rewards.dtype == torch.float32


def test_accumulation_check_catches_a_wrong_unit_in_an_online_method(monkeypatch, tmp_path):
    """An online objective whose weight() counts completions while its loss is a token mean is caught."""
    from alignkit.plugins.ppo import objective as ppo

    monkeypatch.setattr(ppo.PPOObjective, "weight", lambda self, batch: float(batch.num_rows))
    with pytest.raises(ConformanceError, match=r"accumulates: one rollout's .* give updates that differ"):
        check_method("ppo", tmp_path=tmp_path, resume=False, steps=1)
