"""The model's own logit processing in the fused log-prob path (issue 16, class 3).

Tiny random Gemma 2 (``final_logit_softcapping``), Granite (``logits_scaling``), Phi (``lm_head`` bias),
Cohere (``logit_scale``) and Llama (control) folders: every log-prob path of alignkit must give the
log-probs of the distribution the model itself defines. The expected values are always the float64
``log_softmax`` of the model's own ``model(...).logits``, gathered at the answer tokens; nothing is read
back from alignkit. A model whose logits the kernels cannot reproduce must fall back to its own logits
with exactly one warning.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignkit import logprobs
from alignkit.batches import TokenBatch
from alignkit.logprobs import (
    OutputHead,
    PolicyModule,
    next_token_logprobs,
    output_head,
    sequence_logprobs,
    token_stats_with_hidden,
)
from tiny import tiny_model_folder

ARCHS = ["llama", "gemma2", "granite", "phi", "cohere"]
TOL = dict(atol=1e-5, rtol=1e-5)
PROMPTS = [("Question: what is two plus two?", " It is four."),
           ("Say hi.", " Hi there, how are you today?")]


GEMMA2_SOFTCAP = 0.1
"""The tiny random models' raw logits stay within about ±0.9, where Gemma 2's usual cap of 30 is the
identity to 1e-6 (the old path passed with it); a cap of 0.1 puts every logit on the tanh's bend
(the old path is then off by 0.06 on a 4-token answer)."""


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_heads")
    overrides = {"gemma2": {"final_logit_softcapping": GEMMA2_SOFTCAP}}
    return {arch: tiny_model_folder(root / arch, arch, config=overrides.get(arch)) for arch in ARCHS}


def _load(folder: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def _batch(folder: Path) -> TokenBatch:
    """Two right-padded prompt/answer rows; labels are the answer tokens only."""
    tok = AutoTokenizer.from_pretrained(str(folder))
    rows = []
    for prompt, answer in PROMPTS:
        p, a = tok(prompt)["input_ids"], tok(answer, add_special_tokens=False)["input_ids"]
        rows.append((p + a, [-100] * len(p) + a))
    width = max(len(ids) for ids, _ in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r, _ in rows])  # (B, T)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in rows])  # (B, T)
    labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in rows])  # (B, T)
    return TokenBatch(input_ids=ids, attention_mask=mask, labels=labels)


def _own_token_logprobs(model: Any, batch: TokenBatch, tau: float = 1.0) -> torch.Tensor:
    """(B, T-1) float64 log_softmax of the model's own logits at the shifted labels, 0 where ignored."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # (B, T, V)
    logq = torch.log_softmax(logits[:, :-1].double() / tau, dim=-1)  # (B, T-1, V)
    y = batch.labels[:, 1:]  # (B, T-1)
    return logq.gather(-1, y.clamp(min=0)[..., None]).squeeze(-1) * (y != -100)  # (B, T-1)


@pytest.fixture
def warned() -> Iterator[Callable[[], list[str]]]:
    """``warned()``: messages of the RuntimeWarnings alignkit issued so far in the test (all recorded)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield lambda: [str(w.message) for w in caught
                       if issubclass(w.category, RuntimeWarning) and str(w.message).startswith("alignkit:")]


def _trunk_param(model: Any) -> torch.nn.Parameter:
    """A weight matrix of the last decoder layer (its MLP's names differ between architectures)."""
    return [p for p in model.get_decoder().layers[-1].parameters() if p.dim() == 2][-1]


def _expected_head(arch: str, model: Any) -> dict[str, Any]:
    """The head the config and modules declare, by hand (tests/tiny.py's architecture fields)."""
    cfg = model.config
    return {
        "llama": lambda: dict(bias=None, logit_scale=1.0, softcap=None),
        "gemma2": lambda: dict(bias=None, logit_scale=1.0, softcap=GEMMA2_SOFTCAP),
        "granite": lambda: dict(bias=None, logit_scale=1.0 / cfg.logits_scaling, softcap=None),  # divides by 4.0
        "phi": lambda: dict(bias=model.lm_head.bias, logit_scale=1.0, softcap=None),
        "cohere": lambda: dict(bias=None, logit_scale=cfg.logit_scale, softcap=None),  # multiplies by 0.0625
    }[arch]()


# ------------------------------------------------------------------------------------------ values
@pytest.mark.parametrize("tau", [1.0, 0.7])
@pytest.mark.parametrize("arch", ARCHS)
def test_sequence_logprobs_are_the_models_own(folders: dict[str, Path], arch: str, tau: float,
                                             warned: Callable[[], list[str]]) -> None:
    model = _load(folders[arch])
    batch = _batch(folders[arch])
    head = output_head(model)
    assert isinstance(head, OutputHead)
    want_head = _expected_head(arch, model)
    assert head.weight is model.get_output_embeddings().weight
    assert head.bias is want_head["bias"]
    assert head.logit_scale == pytest.approx(want_head["logit_scale"], rel=1e-12)
    assert head.softcap == want_head["softcap"]
    with torch.no_grad():
        want = _own_token_logprobs(model, batch, tau)  # (B, T-1)
        for source in (model, PolicyModule(model)):
            stats = sequence_logprobs(source, batch, temperature=tau)
            torch.testing.assert_close(stats.logprobs.double(), want, **TOL)
            torch.testing.assert_close(stats.sum.double(), want.sum(1), **TOL)
            assert stats.count.tolist() == (batch.labels[:, 1:] != -100).sum(1).tolist()
    assert warned() == []


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_are_the_models_own(folders: dict[str, Path], arch: str) -> None:
    # Per-row weights of different signs, as a DPO loss gives; gradients w.r.t. the output head and a
    # trunk parameter (and Phi's bias) against autograd through the model's own logits.
    model = _load(folders[arch])
    batch = _batch(folders[arch])
    params = {"head": model.get_output_embeddings().weight, "trunk": _trunk_param(model)}
    if model.get_output_embeddings().bias is not None:
        params["bias"] = model.get_output_embeddings().bias
    row_weights = torch.tensor([1.0, -0.5], dtype=torch.float64)
    want = torch.autograd.grad((_own_token_logprobs(model, batch, 0.7).sum(1) * row_weights).sum(),
                               list(params.values()))
    got = torch.autograd.grad((sequence_logprobs(PolicyModule(model), batch, temperature=0.7).sum.double()
                               * row_weights).sum(), list(params.values()))
    for name, g, w in zip(params, got, want):
        assert g.abs().max() > 0, name
        torch.testing.assert_close(g, w, **TOL, msg=lambda m, name=name: f"{name}: {m}")


# ---------------------------------------------------------------------------------------- fallback
class _SquashedHead(torch.nn.Module):
    """An output layer that is not a plain linear map: what the kernels cannot stand in for."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        z = self.linear(hidden)
        return z + 0.25 * torch.sin(3.0 * z)


def _unreproducible_llama(folder: Path, how: str) -> Any:
    model = _load(folder)
    if how == "lm_head":
        model.lm_head = _SquashedHead(model.lm_head)
    else:  # the head stays a plain nn.Linear; the model's forward post-processes its logits
        forward = model.forward

        def patched(*args: Any, **kwargs: Any) -> Any:
            out = forward(*args, **kwargs)
            out.logits = out.logits + 0.25 * torch.sin(3.0 * out.logits)
            return out

        model.forward = patched
    return model


@pytest.mark.parametrize("how", ["forward", "lm_head"])
def test_unreproducible_logits_fall_back_with_one_warning(folders: dict[str, Path], how: str,
                                                          warned: Callable[[], list[str]]) -> None:
    model = _unreproducible_llama(folders["llama"], how)
    batch = _batch(folders["llama"])
    with torch.no_grad():
        want = _own_token_logprobs(model, batch)  # (B, T-1) the patched model's own distribution
        want_tau = _own_token_logprobs(model, batch, 0.7)
        trunk = model.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    assert output_head(model) is None
    with torch.no_grad():
        torch.testing.assert_close(sequence_logprobs(model, batch).logprobs.double(), want, **TOL)
        torch.testing.assert_close(sequence_logprobs(PolicyModule(model), batch, temperature=0.7).sum.double(),
                                   want_tau.sum(1), **TOL)
        stats, hidden = token_stats_with_hidden(PolicyModule(model), batch.input_ids, batch.attention_mask,
                                                batch.labels, entropy=True)
        torch.testing.assert_close(stats.logprobs.double(), want, **TOL)
        torch.testing.assert_close(hidden, trunk.last_hidden_state, **TOL)
    param = _trunk_param(model)
    (got,) = torch.autograd.grad(sequence_logprobs(model, batch).sum.sum(), [param])
    (ref,) = torch.autograd.grad(_own_token_logprobs(model, batch).sum(), [param])
    torch.testing.assert_close(got, ref, **TOL)
    assert len(warned()) == 1, warned()
    assert "LlamaForCausalLM" in warned()[0] and "own logits" in warned()[0]


def test_the_verdict_is_cached_per_model_object(folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import copy

    probes: list[Any] = []
    original = logprobs._probe
    monkeypatch.setattr(logprobs, "_probe", lambda lm: probes.append(lm) or original(lm))
    model = _load(folders["gemma2"])
    batch = _batch(folders["gemma2"])
    with torch.no_grad():
        for _ in range(3):
            sequence_logprobs(PolicyModule(model), batch)
        frozen = copy.deepcopy(model)  # a reference copy keeps the verdict: no second probe
        sequence_logprobs(frozen, batch)
    assert probes == [model]
    assert model.training is False and all(not m.training for m in model.modules())
    model.train()
    sequence_logprobs(model, dataclasses.replace(batch))  # a fresh object would probe; this one is known
    assert probes == [model] and all(m.training for m in model.modules())


def test_probe_restores_train_mode_and_picks_the_reading_that_reproduces_the_logits(tmp_path: Path) -> None:
    # ``logits_scaling`` divides in Granite but multiplies in HyperCLOVAX: the probe keeps the reading
    # that reproduces the model's own logits.
    from transformers import HyperCLOVAXConfig, HyperCLOVAXForCausalLM

    cfg = HyperCLOVAXConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, logits_scaling=3.0)
    torch.manual_seed(0)
    model = HyperCLOVAXForCausalLM(cfg).train()
    head = output_head(model)
    assert head is not None and head.logit_scale == 3.0 and head.softcap is None
    assert all(m.training for m in model.modules())  # the probe ran in eval mode and put every flag back
    model.eval()
    ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :4] = -100
    batch = TokenBatch(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    with torch.no_grad():
        torch.testing.assert_close(sequence_logprobs(model, batch).logprobs.double(),
                                   _own_token_logprobs(model, batch), **TOL)


# ------------------------------------------------------------------------------- wrappers and paths
def test_peft_models_use_the_base_models_head_or_fall_back_for_an_adapted_head(
        folders: dict[str, Path], warned: Callable[[], list[str]]) -> None:
    from peft import LoraConfig, get_peft_model

    batch = _batch(folders["gemma2"])
    for targets, fallback in ((["q_proj", "v_proj"], False), (["q_proj", "lm_head"], True)):
        peft_model = get_peft_model(_load(folders["gemma2"]),
                                    LoraConfig(r=4, target_modules=targets, init_lora_weights=False)).eval()
        with torch.no_grad():
            want = _own_token_logprobs(peft_model, batch)
            got = sequence_logprobs(PolicyModule(peft_model), batch)
        torch.testing.assert_close(got.logprobs.double(), want, **TOL)
        head = output_head(peft_model)
        assert (head is None) == fallback
        if head is not None:
            assert head.softcap == GEMMA2_SOFTCAP
    assert len(warned()) == 1 and "Gemma2ForCausalLM" in warned()[0], warned()


@pytest.mark.parametrize("arch", ["gemma2", "phi"])
def test_stats_with_hidden_skip_unscored_rows_and_survive_length_grouping(folders: dict[str, Path],
                                                                         arch: str) -> None:
    model = _load(folders[arch])
    batch = _batch(folders[arch])
    labels = batch.labels.clone()
    labels[1] = -100  # a row without any scored token (a reward model's rejected answer)
    batch = dataclasses.replace(batch, labels=labels)
    with torch.no_grad():
        want = _own_token_logprobs(model, batch)  # (B, T-1)
        trunk = model.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        for grouping in (0.0, 0.99):
            logprobs.set_length_grouping(grouping)
            try:
                for source in (model, PolicyModule(model)):
                    stats, hidden = token_stats_with_hidden(source, batch.input_ids, batch.attention_mask,
                                                            batch.labels, entropy=True)
                    torch.testing.assert_close(stats.logprobs.double(), want, **TOL)
                    assert stats.count.tolist() == [int((labels[0, 1:] != -100).sum()), 0]
                    assert stats.sum[1] == 0 and stats.mean[1] == 0 and (stats.entropy[1] == 0).all()
                    real = batch.attention_mask.bool()  # (B, T) trimmed padding may read 0
                    torch.testing.assert_close(hidden[real], trunk.last_hidden_state[real], **TOL)
            finally:
                logprobs.set_length_grouping(0.0)


@pytest.mark.parametrize("arch", ["gemma2", "phi", "granite"])
def test_next_token_logprobs_are_the_models_own(folders: dict[str, Path], arch: str) -> None:
    # What an LLM judge reads: the full-vocabulary log-probs of a few answer tokens after each row.
    model = _load(folders[arch])
    batch = _batch(folders[arch])
    candidates = torch.tensor([5, 17, 300, 1000])  # (C,)
    last = batch.attention_mask.sum(1) - 1  # (B,)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # (B, T, V)
        want = torch.log_softmax(logits[torch.arange(2), last].double(), -1)[:, candidates]  # (B, C)
        for source in (model, PolicyModule(model)):
            got = next_token_logprobs(source, batch.input_ids, batch.attention_mask, candidates)
            torch.testing.assert_close(got.double(), want, **TOL)


def test_ppo_shared_critic_scores_through_the_models_head(folders: dict[str, Path]) -> None:
    from alignkit.plugins.ppo.value import SharedCritic

    model = _load(folders["phi"])
    batch = _batch(folders["phi"])
    critic = SharedCritic(PolicyModule(model))
    with torch.no_grad():
        out = critic(PolicyModule(model), batch, temperature=0.7, entropy=True)
        want = _own_token_logprobs(model, batch, 0.7)
    torch.testing.assert_close(out.logprobs.double(), want, **TOL)
    assert out.values.shape == want.shape and out.entropy is not None


# -------------------------------------------------------------------------------------- training runs
def test_dpo_on_gemma2_starts_at_ln2_with_the_models_own_logprobs(folders: dict[str, Path], pairs_file: Path,
                                                                  alignkit_run: Any, monkeypatch: pytest.MonkeyPatch,
                                                                  warned: Callable[[], list[str]]) -> None:
    import alignkit.plugins.dpo.objective as dpo_objective
    from alignkit.metrics import read_metrics

    seen: list[tuple[TokenBatch, torch.Tensor]] = []
    original = dpo_objective.sequence_logprobs

    def spy(policy: Any, batch: dict, **kwargs: Any) -> Any:
        stats = original(policy, batch, **kwargs)
        if not seen and torch.is_grad_enabled():  # the first training forward: initial weights
            seen.append((batch.to("cpu"), stats.sum.detach().cpu().clone()))
        return stats

    monkeypatch.setattr(dpo_objective, "sequence_logprobs", spy)
    result = alignkit_run("method=dpo", f"model.path={folders['gemma2']}", "data=custom", f"data.path={pairs_file}",
                          "data.format=pairwise", "data.eval_fraction=0.25", "trainer.batch_size=2",
                          "trainer.max_steps=1")
    first = next(r for r in read_metrics(result.run_dir) if r["split"] == "train")
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert len(seen) == 1
    batch, sums = seen[0]
    with torch.no_grad():
        want = _own_token_logprobs(_load(folders["gemma2"]), batch).sum(1)  # (2B,)
    torch.testing.assert_close(sums.double(), want, **TOL)
    assert warned() == []


def test_reward_model_lm_regulariser_uses_the_models_own_logprobs(folders: dict[str, Path], tmp_path: Path,
                                                                 alignkit_run: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import alignkit.plugins.reward_model.objective as rm_objective
    from alignkit.metrics import read_metrics

    seen: list[TokenBatch] = []
    original = rm_objective.token_stats_with_hidden

    def spy(policy: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
            **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            seen.append(TokenBatch(input_ids=input_ids.cpu().clone(), attention_mask=attention_mask.cpu().clone(),
                                   labels=labels.cpu().clone()))
        return original(policy, input_ids, attention_mask, labels, **kwargs)

    monkeypatch.setattr(rm_objective, "token_stats_with_hidden", spy)
    rows = [{"prompt": f"Question {i}: what is {i} plus {i}?", "chosen": f"It is {2 * i}.",
             "rejected": f"I will not answer {i}."} for i in range(8)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = alignkit_run("method=reward_model", f"model.path={folders['phi']}", "data=custom", f"data.path={data}",
                          "data.format=pairwise", "data.eval_fraction=0.25", "method.lm_weight=0.5",
                          "trainer.batch_size=2", "trainer.max_steps=1")
    first = next(r for r in read_metrics(result.run_dir) if r["split"] == "train")
    assert len(seen) == 1
    batch = seen[0]
    pairs = batch.input_ids.shape[0] // 2
    assert (batch.labels[pairs:] == -100).all()  # only the chosen answers are scored
    with torch.no_grad():
        own = _own_token_logprobs(_load(folders["phi"]), batch)  # (2B, T-1)
    want = -own.sum() / (batch.labels[:, 1:] != -100).sum()
    assert first["lm_nll"] == pytest.approx(float(want), abs=1e-5)
