"""alignkit-simpo: the loss pinned to hand-computed values, the objective's length normalisation, the
alignkit conformance kit, and the command line a user types."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from alignkit.api import PairBatch, get_registry
from alignkit.testing import check_method
from alignkit_simpo.losses import simpo
from alignkit_simpo.objective import SimPOObjective


def cli(*args: str, cwd) -> subprocess.CompletedProcess:
    """``alignkit ...`` as a user runs it (through this interpreter, so it sees this environment)."""
    return subprocess.run([sys.executable, "-m", "alignkit.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


# ----------------------------------------------------------------------------- the loss
def test_simpo_hand_computed():
    # beta=2, gamma=1. Pair 1: z = 2 * (-1 - (-2)) - 1 = 1  -> -log sigmoid(1)  = log(1 + e^-1) = 0.3132616875
    #                  Pair 2: z = 2 * (-2 - (-1)) - 1 = -3 -> -log sigmoid(-3) = log(1 + e^3)  = 3.0485873516
    loss = simpo(torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -1.0]), beta=2.0, gamma=1.0)
    assert loss.shape == (2,)
    torch.testing.assert_close(loss, torch.tensor([0.3132616875182228, 3.048587351573742]), atol=1e-6, rtol=0)


def test_simpo_label_smoothing_hand_computed():
    # z = 1, eps = 0.25: 0.75 * log(1 + e^-1) + 0.25 * log(1 + e^1) = 0.2349462656 + 0.3283154219
    loss = simpo(torch.tensor([-1.0]), torch.tensor([-2.0]), beta=2.0, gamma=1.0, label_smoothing=0.25)
    assert loss.item() == pytest.approx(0.5632616875182228, abs=1e-6)


def test_simpo_gradient_raises_chosen_and_lowers_rejected():
    chosen, rejected = torch.tensor([-1.5], requires_grad=True), torch.tensor([-1.5], requires_grad=True)
    simpo(chosen, rejected).sum().backward()
    assert chosen.grad.item() < 0 < rejected.grad.item()  # descending the loss raises chosen, lowers rejected


def test_the_loss_is_alignkit_losses_simpo():
    from alignkit.losses import simpo as registered

    assert registered is simpo


# ----------------------------------------------------------------------------- the objective
def test_objective_uses_length_normalised_logprobs():
    """The objective's loss equals SimPO on mean per-token log-probs computed here from full logits."""
    from alignkit.models import ModelConfig, load_model

    model, _ = load_model(OmegaConf.merge(OmegaConf.structured(ModelConfig), {"source": "random"}))
    model.eval()
    # One pair: chosen has 3 answer tokens, rejected 1; row 0 chosen, row 1 rejected (the pairs collator's order).
    input_ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 11, 0, 0]])
    labels = torch.tensor([[-100, -100, 7, 8, 9], [-100, -100, 11, -100, -100]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    batch = PairBatch(input_ids=input_ids, labels=labels, attention_mask=mask, num_pairs=1)
    cfg = OmegaConf.create({"method": {"beta": 2.0, "gamma": 0.5, "label_smoothing": 0.0, "sft_weight": 0.0},
                            "loss": {"name": "simpo"}})
    objective = SimPOObjective(SimpleNamespace(cfg=cfg, policy=model, registry=get_registry()))
    out = objective(batch)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=input_ids, attention_mask=mask).logits.float(), -1)  # (2, 5, V)
    chosen = (logp[0, 1, 7] + logp[0, 2, 8] + logp[0, 3, 9]) / 3  # position t predicts token t+1
    rejected = logp[1, 1, 11] / 1
    expected = -torch.nn.functional.logsigmoid(2.0 * (chosen - rejected) - 0.5)
    assert out.total().item() == pytest.approx(expected.item(), abs=1e-5)
    assert out.metrics["margin"].item() == pytest.approx(2.0 * (chosen - rejected).item(), abs=1e-5)


# ----------------------------------------------------------------------------- alignkit's conformance kit
def test_conformance(tmp_path):
    report = check_method("simpo", tmp_path=tmp_path)
    assert report["kind"] == "pairs" and report["owner"].startswith("alignkit-simpo")
    assert report["checks"] == ["registered", "composes", "loss", "trains", "resumes", "dropout-free", "accumulates"]


# ----------------------------------------------------------------------------- the command line
def test_alignkit_plugins_shows_simpo_with_its_version(tmp_path):
    from importlib.metadata import version

    result = cli("plugins", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    [entry] = [p for p in report["plugins"] if p["distribution"] == "alignkit-simpo"]
    assert entry["version"] == version("alignkit-simpo") == "0.1.0"
    assert entry["registered"] == {"methods": ["simpo"], "losses": ["simpo"], "config_dirs": ["pkg://alignkit_simpo.conf"]}
    assert report["failures"] == []


def test_alignkit_train_method_simpo(tmp_path, alignkit_data):
    result = cli("train", "method=simpo", "model=tiny", *alignkit_data("pairs"), "trainer.max_steps=2",
                 "trainer.batch_size=2", "trainer.progress=false", "method.gamma=0.5", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method"] == "simpo" and summary["steps"] == 2
    assert math.isfinite(summary["eval_after"]["loss"]) and summary["eval_after"]["pairs"] == 4.0
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "gamma: 0.5" in config


def test_a_wrong_type_is_one_line_naming_the_key(tmp_path):
    result = cli("train", "method=simpo", "model=tiny", "method.beta=abc", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == ("alignkit: error: config key method.beta: Value 'abc' of type 'str' could not "
                                     "be converted to Float")
