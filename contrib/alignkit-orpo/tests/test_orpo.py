"""Tests of alignkit-orpo: the loss by hand, the objective against plain torch, conformance, CLI."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from alignkit_orpo.losses import log_odds, orpo_odds_ratio_loss
from alignkit_orpo.objective import ORPOObjective

from alignkit.api import PairBatch, unwrap_lm
from alignkit.testing import check_method

IGNORE = -100


# -- (1) the loss, by hand -------------------------------------------------------------------------

def test_odds_ratio_loss_by_hand():
    # pair 1: P(y_c) = 3/4 -> odds 3; P(y_r) = 1/4 -> odds 1/3; odds ratio 9,
    #         loss = -log sigmoid(log 9) = log(1 + 1/9) = log(10/9) = 0.105360516
    # pair 2: P(y_c) = 1/2 -> odds 1; P(y_r) = 4/5 -> odds 4; odds ratio 1/4,
    #         loss = -log sigmoid(-log 4) = log(1 + 4) = log 5 = 1.609437912
    chosen = torch.tensor([math.log(0.75), math.log(0.5)])
    rejected = torch.tensor([math.log(0.25), math.log(0.8)])
    loss = orpo_odds_ratio_loss(chosen, rejected)
    assert loss.shape == (2,)
    assert loss[0].item() == pytest.approx(0.105360516, abs=1e-6)
    assert loss[1].item() == pytest.approx(1.609437912, abs=1e-6)
    # log odds: log 3 and log(1/4)
    assert log_odds(chosen).tolist() == pytest.approx([math.log(3.0), 0.0], abs=1e-6)
    # equal answers: log odds ratio 0, loss log 2
    assert orpo_odds_ratio_loss(chosen, chosen).tolist() == pytest.approx([math.log(2)] * 2, abs=1e-6)


def test_odds_ratio_loss_is_finite_at_probability_one():
    loss = orpo_odds_ratio_loss(torch.tensor([0.0], requires_grad=True), torch.tensor([-1.0]))
    assert torch.isfinite(loss).all()
    loss.sum().backward()


def test_the_loss_is_registered():
    from alignkit.losses import orpo_odds_ratio

    assert orpo_odds_ratio is orpo_odds_ratio_loss


# -- (2) the objective against plain torch ---------------------------------------------------------

def _pair_batch() -> PairBatch:
    """P = 3 pairs, T = 8, right-padded; labels = input_ids on answer tokens, -100 elsewhere.

    Pair 3's chosen and rejected answers are the same sequence (a tie)."""
    rows = [  # (prompt ids, answer ids)
        ([11, 12, 13], [21, 22, 23, 24]),  # chosen 1
        ([31, 32], [41, 42]),  # chosen 2
        ([51, 52], [61, 62, 63]),  # chosen 3
        ([11, 12, 13], [25, 26]),  # rejected 1
        ([31, 32], [43, 44, 45, 46, 47]),  # rejected 2
        ([51, 52], [61, 62, 63]),  # rejected 3 = chosen 3
    ]
    T = 8
    input_ids = torch.zeros(len(rows), T, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), T, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    for r, (prompt, answer) in enumerate(rows):
        seq = prompt + answer
        input_ids[r, : len(seq)] = torch.tensor(seq)
        attention_mask[r, : len(seq)] = 1
        labels[r, len(prompt) : len(seq)] = torch.tensor(answer)
    return PairBatch(input_ids=input_ids, attention_mask=attention_mask, labels=labels, num_pairs=3,
                     index=torch.arange(3), margin=torch.zeros(3), label=torch.ones(3))


def _reference(model, batch: PairBatch, lam: float) -> dict:
    """ORPO with plain torch in float64: full logits, log_softmax, gather."""
    model = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (2P, T-1, V): position t predicts token t+1
    targets = batch.labels[:, 1:]
    mask = targets != IGNORE
    token_logp = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
    sums, counts = token_logp.sum(-1), mask.sum(-1).double()  # (2P,)
    P = batch.num_pairs
    nll = -sums[:P].sum() / counts[:P].sum()  # mean over all chosen-answer tokens
    mean = sums / counts
    lo = mean - torch.log(1 - torch.exp(mean))
    odds_ratio = -F.logsigmoid(lo[:P] - lo[P:])  # (P,)
    return {"nll": nll.item(), "odds_ratio": odds_ratio.mean().item(), "loss": (nll + lam * odds_ratio.mean()).item(),
            "chosen_tokens": counts[:P].sum().item(), "margin": (lam * (lo[:P] - lo[P:])).tolist(),
            "odds_ratio_per_pair": odds_ratio.tolist(), "nll_sum": (-sums[:P]).tolist()}


def test_objective_matches_plain_torch(alignkit_objective):
    # built as `alignkit train method=orpo method.lam=0.3 model=tiny` builds it (alignkit.testing)
    objective, ctx = alignkit_objective("method=orpo", "method.lam=0.3")
    assert isinstance(objective, ORPOObjective) and objective.lam == 0.3
    batch = _pair_batch()
    ref = _reference(unwrap_lm(ctx.policy), batch, lam=0.3)  # the plain HF model inside the run's wrapper

    assert objective.weight(batch) == {"nll": ref["chosen_tokens"], "odds_ratio": 3.0}
    out = objective(batch)
    terms = out.parts()
    assert terms["nll"].value.item() == pytest.approx(ref["nll"], rel=1e-5)
    assert terms["odds_ratio"].value.item() == pytest.approx(ref["odds_ratio"], rel=1e-5)
    assert terms["odds_ratio"].coef == 0.3
    assert out.total().item() == pytest.approx(ref["loss"], rel=1e-5)
    out.total().backward()  # the gradient reaches the policy
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ctx.policy.parameters())

    values = objective.evaluate(batch)
    assert values["margin"].tolist() == pytest.approx(ref["margin"], rel=1e-4, abs=1e-6)
    assert values["odds_ratio"].tolist() == pytest.approx(ref["odds_ratio_per_pair"], rel=1e-5)
    assert values["nll_sum"].tolist() == pytest.approx(ref["nll_sum"], rel=1e-5)
    # the identical pair is a tie (1/2) by alignkit's rule; the others follow the margin's sign
    expected = [1.0 if m > 0 else 0.0 for m in ref["margin"][:2]] + [0.5]
    assert values["correct"].tolist() == expected
    summary = objective.summarize(values)
    assert summary["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert summary["accuracy"] == pytest.approx(sum(expected) / 3)


# -- (3) alignkit's conformance kit ----------------------------------------------------------------

def test_conformance(tmp_path):
    report = check_method("orpo", tmp_path=tmp_path)
    # registered, composes, loss, trains, resumes, dropout-free, accumulates (both terms, own units)
    assert {"accumulates", "dropout-free", "resumes"} <= set(report["checks"])


def test_conformance_other_lambda(tmp_path):
    check_method("orpo", "method.lam=1.0", tmp_path=tmp_path, resume=False)


# -- (4) the command line --------------------------------------------------------------------------

def test_cli_trains_two_steps(tmp_path):
    exe = Path(sys.executable).parent / "alignkit"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "alignkit.cli"]
    run_dir = tmp_path / "orpo-run"
    result = subprocess.run(
        cmd + ["train", "method=orpo", "model=tiny", "trainer.max_steps=2", "trainer.batch_size=2",
               "data.max_examples=16", "data.eval_examples=4", "method.lam=0.2", f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m.get("split") == "train"]
    assert [m["step"] for m in train] == [1, 2]
    for m in train:
        assert {"loss", "nll", "odds_ratio"} <= m.keys()
        assert all(math.isfinite(m[k]) for k in ("loss", "nll", "odds_ratio"))
        assert m["loss"] == pytest.approx(m["nll"] + 0.2 * m["odds_ratio"], rel=1e-6)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["method"] == "orpo"
    for key in ("loss", "nll", "odds_ratio", "accuracy", "margin"):
        assert key in summary["eval_after"]
    assert "lam: 0.2" in (run_dir / "config.yaml").read_text()
