"""``alignkit.testing.objective_for`` / the ``alignkit_objective`` fixture build a method's objective outside a
run, as a run builds it, for unit tests on hand-made batches (issue 17, docs item 3); and the user-facing
messages name only public places (items 8 and 10).

Expected values come from plain torch in float64 on full logits of a copy of the same tiny model, or by hand.
"""

from __future__ import annotations

import ast
import copy
import json
import math
import re
from pathlib import Path

import pytest
import torch

from alignkit.api import ConfigError, PairBatch, TokenBatch, unwrap_lm
from alignkit.testing import BuiltObjective, objective_for

REPO = Path(__file__).resolve().parents[1]
IGNORE = -100


def token_batch() -> TokenBatch:
    """Two rows, right-padded; labels = input_ids on the answer, -100 on prompt and padding (not shifted)."""
    return TokenBatch(
        input_ids=torch.tensor([[5, 6, 7, 40, 41, 0], [8, 9, 50, 51, 52, 53]]),  # (2, 6)
        attention_mask=torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]),  # (2, 6)
        labels=torch.tensor([[IGNORE, IGNORE, IGNORE, 40, 41, IGNORE], [IGNORE, IGNORE, 50, 51, 52, 53]]),  # (2, 6)
    )


def pair_batch() -> PairBatch:
    """P = 2 pairs: chosen rows 0-1, rejected rows 2-3, same layout as :func:`token_batch`."""
    return PairBatch(
        input_ids=torch.tensor([[5, 6, 7, 40, 41, 0], [8, 9, 50, 51, 52, 0],
                                [5, 6, 7, 60, 0, 0], [8, 9, 70, 71, 0, 0]]),  # (2P, T)
        attention_mask=torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0],
                                     [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0]]),  # (2P, T)
        labels=torch.tensor([[IGNORE, IGNORE, IGNORE, 40, 41, IGNORE], [IGNORE, IGNORE, 50, 51, 52, IGNORE],
                             [IGNORE, IGNORE, IGNORE, 60, IGNORE, IGNORE], [IGNORE, IGNORE, 70, 71, IGNORE, IGNORE]]),
        num_pairs=2,
    )


def plain_logprob_sums(policy: torch.nn.Module, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(R,) summed log-probs of the target tokens and (R,) their counts: full logits, float64."""
    model = copy.deepcopy(unwrap_lm(policy)).double().eval()
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # (R, T, V)
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)  # (R, T-1, V): position t predicts token t+1
    targets = batch.labels[:, 1:]  # (R, T-1)
    mask = targets != IGNORE  # (R, T-1)
    token = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask  # (R, T-1)
    return token.sum(-1), mask.sum(-1).double()


# ----------------------------------------------------------------------------- objective_for
def test_objective_for_builds_the_run_objective_on_synthetic_data(tmp_path):
    built = objective_for("method=sft", run_dir=tmp_path)
    assert isinstance(built, BuiltObjective)
    objective, ctx = built
    assert type(objective).__module__ == "alignkit.plugins.sft.objective"
    assert ctx.cfg.method.name == "sft" and ctx.cfg.model.name == "tiny" and ctx.kind == "tokens"
    assert Path(ctx.run_dir) == tmp_path
    # No data override: 16 synthetic rows of the method's kind, written under run_dir, feed the rollout.
    data = tmp_path / "data" / "synthetic_tokens.jsonl"
    assert Path(ctx.cfg.data.path) == data and ctx.cfg.data.format == "prompt_completion"
    assert len(data.read_text().splitlines()) == 16
    batch = ctx.rollout.next_batch(ctx.policy)
    assert isinstance(batch, TokenBatch)
    assert all("Question" in text for text in ctx.tokenizer.batch_decode(batch.input_ids, skip_special_tokens=True))


def test_data_overrides_are_kept(tmp_path, pairs_file):
    _, ctx = objective_for("method=dpo", "data=custom", f"data.path={pairs_file}", "data.format=pairwise",
                           "method.beta=0.5", run_dir=tmp_path / "run")
    assert Path(ctx.cfg.data.path) == pairs_file and ctx.cfg.method.beta == 0.5
    assert not (tmp_path / "run" / "data").exists()


def test_a_one_term_loss_equals_plain_torch(alignkit_objective):
    objective, ctx = alignkit_objective("method=sft")
    batch = token_batch()
    sums, counts = plain_logprob_sums(ctx.policy, batch)
    assert batch.response_mask().shape == (2, 5)  # (R, T-1): log-probs are shifted, labels are not
    assert objective.weight(batch) == 2 + 4  # target tokens, counted by hand
    out = objective(batch)
    expected = float(-sums.sum() / counts.sum())  # token-mean NLL
    assert out.loss is not None and out.terms == {}
    assert set(out.parts()) == {"loss"} and out.parts()["loss"].coef == 1.0
    assert out.total().item() == pytest.approx(expected, rel=1e-5)
    out.total().backward()  # the gradient reaches the policy the loop trains
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ctx.policy.parameters())


def test_a_composite_loss_and_the_held_out_tie_rule(alignkit_objective):
    # A frozen reference equal to the initial policy: every pair's DPO margin is 0, so the pair loss is
    # -log sigmoid(0) = log 2 and every held-out pair is a tie (1/2).
    objective, ctx = alignkit_objective("method=dpo", "method.reference=model", "method.sft_weight=0.5")
    batch = pair_batch()
    assert objective.weight(batch) == {"pair_loss": 2.0, "sft_nll": 2.0 + 3.0}
    sums, counts = plain_logprob_sums(ctx.policy, batch)
    nll = float(-sums[:2].sum() / counts[:2].sum())  # token mean over the chosen answers
    out = objective(batch)
    assert out.loss is None
    parts = out.parts()
    assert list(parts) == ["pair_loss", "sft_nll"]  # the order of terms: the first weights the metrics
    assert parts["pair_loss"].value.item() == pytest.approx(math.log(2), abs=1e-6)
    assert parts["sft_nll"].value.item() == pytest.approx(nll, rel=1e-5) and parts["sft_nll"].coef == 0.5
    assert out.total().item() == pytest.approx(math.log(2) + 0.5 * nll, rel=1e-5)
    with torch.no_grad():
        values = objective.evaluate(batch)
    assert values["correct"].tolist() == [0.5, 0.5]
    summary = objective.summarize(values)
    assert summary["accuracy"] == 0.5 and summary["pairs"] == 2.0


def test_a_bad_override_is_the_runs_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"method\.beta"):
        objective_for("method=dpo", "method.beta=abc", run_dir=tmp_path)


# ----------------------------------------------------------------------------- messages (items 8 and 10)
def test_a_loss_of_another_family_is_named_by_family():
    from alignkit.testing import compose_run_config

    with pytest.raises(ConfigError, match=r"^loss=plackett_luce is not a loss of family 'preference' "
                                          r"\(its family is 'reward-model'\); method=dpo takes: cdpo, dpo, ipo"):
        compose_run_config("method=dpo", "loss=plackett_luce")


#: Modules a user may be sent to: the public surface, the losses namespace, and what runs as a program.
PUBLIC_MODULES = {"api", "rl", "testing", "losses", "kernels", "plugins", "conf", "cli", "worker"}


def _strings_outside_docstrings(tree: ast.AST) -> list[ast.Constant]:
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def test_messages_point_only_at_public_modules():
    """Every string in core/ and plugins/ that is not a docstring (error messages, help) names only public
    modules: every other alignkit module is internal, per docs/plugins.md."""
    found = []
    for root in ("core", "plugins"):
        for path in sorted((REPO / root).rglob("*.py")):
            for node in _strings_outside_docstrings(ast.parse(path.read_text())):
                for match in re.finditer(r"\balignkit\.([a-z_]+)", node.value):
                    if match.group(1) not in PUBLIC_MODULES:
                        found.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value.strip()[:100]!r}")
    assert not found, "messages naming internal modules:\n" + "\n".join(found)


def test_an_object_without_the_contract_is_refused_naming_the_public_protocol():
    from alignkit.interfaces import Capabilities

    with pytest.raises(TypeError, match=r"missing weight, __call__; see alignkit\.api\.Objective") as info:
        Capabilities.of(object())
    assert json.dumps(str(info.value)).count("alignkit.interfaces") == 0
