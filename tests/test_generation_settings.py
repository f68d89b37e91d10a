"""Issue 16, class 4: generation samples exactly what is configured, never the model folder's own settings.

A model folder whose ``generation_config.json`` carries ``repetition_penalty`` and a ``suppress_tokens``
list covering most of the vocabulary must not change what ``rollout=generate``, ``alignkit chat`` or
``alignkit generate`` draw: the expected tokens come from a plain loop over full forward passes
(softmax(logits / T) and ``torch.multinomial`` with the same seed, or argmax), written here without
``generate``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import pytest
import torch

from tiny import load_tokenizer, tiny_model_folder

FIRST_SUPPRESSED = 256  # ids >= this are in the folder's suppress_tokens: ~99.5% of the vocabulary


@torch.no_grad()
def reference_sample(model, prompt_ids: list[int], *, rows: int, steps: int, end_ids: Iterable[int], pad_id: int,
                     temperature: float = 1.0, greedy: bool = False, penalty: float = 1.0,
                     rng_state: torch.Tensor | None = None, seed: int | None = None) -> list[list[int]]:
    """``rows`` completions of one prompt by plain decoding, each up to and including its first end id.

    Every step runs the whole sequence through the model (no KV cache), takes the last position's
    logits in float32, optionally applies the CTRL repetition penalty (Keskar et al. 2019: a seen
    token's logit is divided by ``penalty``, multiplied when negative), then draws one token per row
    from softmax(logits / T) by inverse transform sampling, one ``torch.rand`` (rows, 1) float64 draw:
    the first token whose cumulative probability exceeds u · Σp (or takes
    the argmax). Finished rows keep receiving ``pad_id``, as every batched decoder does.
    """
    ends = torch.tensor(sorted(end_ids))
    ids = torch.tensor([list(prompt_ids)] * rows)  # (R, P)
    done = torch.zeros(rows, dtype=torch.bool)  # (R,)
    out: list[list[int]] = [[] for _ in range(rows)]
    with torch.random.fork_rng(devices=[]):
        if rng_state is not None:
            torch.set_rng_state(rng_state)
        if seed is not None:
            torch.manual_seed(seed)
        for _ in range(steps):
            logits = model(ids).logits[:, -1, :].float()  # (R, V)
            if penalty != 1.0:
                seen = torch.gather(logits, 1, ids)  # (R, T)
                logits = logits.scatter(1, ids, torch.where(seen < 0, seen * penalty, seen / penalty))
            if greedy:
                nxt = logits.argmax(dim=-1)  # (R,)
            else:
                cdf = torch.softmax(logits / temperature, dim=-1).double().cumsum(dim=-1)  # (R, V)
                u = torch.rand(rows, 1, dtype=torch.float64) * cdf[:, -1:]  # (R, 1)
                nxt = torch.searchsorted(cdf, u, right=True)[:, 0]  # (R,)
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
            for r in range(rows):
                if not done[r]:
                    out[r].append(int(nxt[r]))
            done |= torch.isin(nxt, ends)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            if bool(done.all()):
                break
    return out


def completion_rows(batch: dict) -> list[list[int]]:
    """The completion tokens of every row of a rollout batch (labels that are not -100)."""
    return [row[row != -100].tolist() for row in batch.labels]


def load_plain(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def processors_folder(tmp_path_factory) -> Path:
    """A tiny Llama whose generation_config.json adds a repetition penalty and suppresses most of the vocabulary.

    Untied embeddings: with tied ones a random model's argmax repeats its input token (here "\\n").
    """
    vocab = len(load_tokenizer())
    return tiny_model_folder(tmp_path_factory.mktemp("gencfg") / "model", "llama", config={"tie_word_embeddings": False},
                             generation_config={
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "repetition_penalty": 1.05,
        "suppress_tokens": list(range(FIRST_SUPPRESSED, vocab))})


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Describe thing number {i}."}) + "\n" for i in range(6)))
    return path


def _trainer(alignkit_compose, folder: Path, prompts: Path, run_dir: Path, *extra: str):
    from alignkit.loop import Trainer

    cfg = alignkit_compose("method=reinforce", f"model.path={folder}", "data=custom", f"data.path={prompts}",
                           "data.format=prompts", "scorer=function", "scorer.fn=alignkit.plugins.scorers.rewards:brevity",
                           "trainer.batch_size=1", "rollout.num_samples=2", "rollout.max_new_tokens=8",
                           "rollout.temperature=0.8", *extra)
    return Trainer(cfg, run_dir)


def _rollout_and_reference(trainer, folder: Path, *, penalty: float = 1.0):
    rollout = trainer.rollout
    state = rollout.rng.state["cpu"].clone()  # the stream the next batch draws from
    batch = rollout.next_batch(trainer.policy)
    model, tok = load_plain(folder)
    prompt = tok.apply_chat_template(batch.prompts[0], add_generation_prompt=True, tokenize=True, return_dict=False)
    assert batch.input_ids[0, :len(prompt)].tolist() == list(prompt)
    expected = reference_sample(model, prompt, rows=2, steps=8, end_ids={2}, pad_id=tok.pad_token_id,
                                temperature=0.8, penalty=penalty, rng_state=state)
    return completion_rows(batch), expected


def test_rollout_samples_the_plain_temperature_softmax_whatever_the_folder_ships(
        alignkit_compose, processors_folder, prompts_file, tmp_path):
    trainer = _trainer(alignkit_compose, processors_folder, prompts_file, tmp_path / "run")
    got, expected = _rollout_and_reference(trainer, processors_folder)
    assert got == expected
    tokens = [t for row in got for t in row]
    # softmax(logits / T) of a random model puts ~99.5% of its mass on ids the folder suppresses;
    # inheriting suppress_tokens would make that share 0.
    assert sum(t >= FIRST_SUPPRESSED for t in tokens) / len(tokens) > 0.5


def test_an_explicit_repetition_penalty_is_reported_and_applied(alignkit_compose, processors_folder, prompts_file,
                                                                tmp_path):
    with pytest.warns(RuntimeWarning, match=r"repetition_penalty=1\.3.*biased"):
        trainer = _trainer(alignkit_compose, processors_folder, prompts_file, tmp_path / "run",
                           "rollout.repetition_penalty=1.3")
    got, expected = _rollout_and_reference(trainer, processors_folder, penalty=1.3)
    assert got == expected


def test_chat_and_generate_decode_greedily_without_the_folders_processors(processors_folder, cli_main, tmp_path):
    model, tok = load_plain(processors_folder)
    messages = [{"role": "user", "content": "Tell me about rivers."}]
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    (tokens,) = reference_sample(model, prompt, rows=1, steps=6, end_ids={2}, pad_id=2, greedy=True)
    expected = tok.decode([t for t in tokens if t != 2], skip_special_tokens=True).strip()
    assert any(t >= FIRST_SUPPRESSED for t in tokens), "the argmax lies in the suppressed range"

    code, out, err = cli_main("chat", "--model", processors_folder, "--prompt", messages[0]["content"],
                              "--max-new-tokens", "6")
    assert code == 0, err
    assert out.rstrip("\n") == expected

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": messages[0]["content"]}) + "\n")
    answers = tmp_path / "answers.jsonl"
    code, _, err = cli_main("generate", "--model", processors_folder, "--prompts", prompts, "--out", answers,
                            "--max-new-tokens", "6")
    assert code == 0, err
    assert [json.loads(line)["completion"] for line in answers.read_text().splitlines()] == [expected]


def test_generation_config_is_built_from_the_settings_only():
    from alignkit.generation import SamplingSettings, distorting_options, generation_config

    settings = SamplingSettings(max_new_tokens=5, temperature=0.7)
    config = generation_config(settings, {7, 2}, pad_id=2)
    assert (config.do_sample, config.temperature, config.top_k, config.top_p) == (True, 0.7, 0, 1.0)
    assert config.eos_token_id == [2, 7] and config.max_new_tokens == 5
    assert config.repetition_penalty == 1.0 and config.suppress_tokens is None and config.no_repeat_ngram_size == 0
    assert distorting_options(settings) == []
    named = distorting_options(SamplingSettings(top_p=0.9, repetition_penalty=1.2, suppress_tokens=(5,),
                                                no_repeat_ngram_size=3, min_new_tokens=2))
    assert [n.split("=")[0] for n in named] == ["top_p", "repetition_penalty", "no_repeat_ngram_size",
                                                "min_new_tokens", "suppress_tokens"]


def test_the_models_generation_config_is_put_back_after_generating(processors_folder):
    from alignkit.generation import SamplingSettings, end_token_ids, sample

    model, tok = load_plain(processors_folder)
    original = model.generation_config
    (cut,) = sample(model, [[1, 2, 3]], SamplingSettings(max_new_tokens=2, greedy=True),
                    end_ids=end_token_ids(tok, model), pad_id=2, tokenizer=tok)
    assert model.generation_config is original and original.repetition_penalty == 1.05
    assert len(cut.tokens) <= 2
