"""Issue 16, class 5: generation stops at every end-of-turn id the model declares, everywhere.

The tiny folders reproduce chat releases whose tokenizer EOS is ``<|endoftext|>`` (id 0) while turns
end with ``<|im_end|>`` (id 2): either the generation config declares both (``eos_token_id: [0, 2]``,
as Gemma and several Llama 3 releases ship) or only the chat template writes ``<|im_end|>``. The
lm_head bias of id 2 is raised so that a turn ends after a few sampled tokens. Expected completions
come from a plain sampling loop (``reference_sample``: full forwards, softmax, ``torch.multinomial``
with the same seed) that stops at ids {0, 2}.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from test_generation_settings import completion_rows, load_plain, reference_sample

from tiny import load_tokenizer, tiny_model_folder

END_OF_TEXT, IM_END = 0, 2
ENDS = {END_OF_TEXT, IM_END}
END_PROBABILITY = 0.3  # of <|im_end|> at the first step after the reference prompt


def _plant_end(folder: Path, probability: float) -> None:
    """Raise lm_head.bias[<|im_end|>] so that it has ``probability`` after a chat prompt (phi has a bias)."""
    model, tok = load_plain(folder)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hello there."}], add_generation_prompt=True,
                                     tokenize=True, return_dict=False)
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1].double()  # (V,)
        others = torch.cat([logits[:IM_END], logits[IM_END + 1:]]).logsumexp(dim=0)
        model.lm_head.bias[IM_END] += float(others - logits[IM_END]) + math.log(probability / (1 - probability))
    model.save_pretrained(folder)


@pytest.fixture(scope="module", params=["declared", "template"])
def end_folder(request, tmp_path_factory) -> Path:
    """``declared``: generation_config.eos_token_id [0, 2]; ``template``: only the ChatML template ends turns with 2."""
    eos = [END_OF_TEXT, IM_END] if request.param == "declared" else END_OF_TEXT
    folder = tiny_model_folder(tmp_path_factory.mktemp(request.param) / "model", "phi", eos_token="<|endoftext|>",
                               generation_config={"bos_token_id": 1, "eos_token_id": eos, "pad_token_id": IM_END})
    _plant_end(folder, END_PROBABILITY)
    return folder


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Describe thing number {i}."}) + "\n" for i in range(6)))
    return path


# ----------------------------------------------------------------------------- which ids end a turn
def test_end_token_ids_of_declared_lists_and_chat_templates():
    from transformers import GenerationConfig

    from alignkit.generation import end_token_ids, turn_end_token_id

    tok = load_tokenizer()
    tok.eos_token = "<|endoftext|>"
    assert turn_end_token_id(tok) == IM_END  # ChatML: <|im_end|> follows the assistant's text
    declaring = torch.nn.Module()
    declaring.generation_config = GenerationConfig(eos_token_id=[END_OF_TEXT, 7])
    assert end_token_ids(tok, declaring) == {END_OF_TEXT, IM_END, 7}

    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>", "<|start_header_id|>",
                                                         "<|end_header_id|>", "<|eot_id|>"]})
    tok.chat_template = ("{% for m in messages %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else "
                         "m['role']) + '\\n' + m['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}")
    assert turn_end_token_id(tok) == tok.convert_tokens_to_ids("<end_of_turn>")  # Gemma
    tok.chat_template = ("{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + "
                         "m['content'] | trim + '<|eot_id|>' }}{% endfor %}")
    assert turn_end_token_id(tok) == tok.convert_tokens_to_ids("<|eot_id|>")  # Llama 3
    tok.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    assert turn_end_token_id(tok) is None and end_token_ids(tok) == {END_OF_TEXT}  # turns end with plain text


def test_a_completion_is_cut_at_its_first_end_id():
    from alignkit.generation import cut_completion

    tok = load_tokenizer()
    hello = tok("Hello world", add_special_tokens=False)["input_ids"]
    cut = cut_completion([*hello, IM_END, 9, END_OF_TEXT, IM_END], ENDS, (), tok)
    assert cut.tokens == [*hello, IM_END] and cut.content == hello and cut.ended
    assert cut.text == "Hello world"
    capped = cut_completion(hello, ENDS, (), tok)
    assert capped.tokens == capped.content == hello and not capped.ended


# ----------------------------------------------------------------------------- every consumer stops there
def test_rollout_completions_end_at_the_end_of_turn(alignkit_compose, end_folder, prompts_file, tmp_path):
    from alignkit.loop import Trainer

    cfg = alignkit_compose("method=reinforce", f"model.path={end_folder}", "data=custom", f"data.path={prompts_file}",
                           "data.format=prompts", "scorer=function", "scorer.fn=alignkit.plugins.scorers.rewards:brevity",
                           "trainer.batch_size=1", "rollout.num_samples=4", "rollout.max_new_tokens=12")
    trainer = Trainer(cfg, tmp_path / "run")
    rollout = trainer.rollout
    state = rollout.rng.state["cpu"].clone()
    batch = rollout.next_batch(trainer.policy)
    model, tok = load_plain(end_folder)
    prompt = tok.apply_chat_template(batch.prompts[0], add_generation_prompt=True, tokenize=True, return_dict=False)
    expected = reference_sample(model, prompt, rows=4, steps=12, end_ids=ENDS, pad_id=IM_END, rng_state=state)
    got = completion_rows(batch)
    assert got == expected
    for row, tokens in enumerate(got):
        ended = tokens[-1] in ENDS
        assert bool(batch.ended[row]) == ended
        # What scorers read: the text before the end of the turn, the end token removed.
        assert batch.completions[row] == tok.decode(tokens[:-1] if ended else tokens, skip_special_tokens=True)
    assert any(tokens[-1] == IM_END and len(tokens) > 1 for tokens in got), "some turn ends after a few tokens"
    assert batch.ended.sum() >= 3


def _expected_answer(folder: Path, message: str, seed: int) -> str:
    model, tok = load_plain(folder)
    prompt = tok.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True, tokenize=True,
                                     return_dict=False)
    (tokens,) = reference_sample(model, prompt, rows=1, steps=12, end_ids=ENDS, pad_id=IM_END, seed=seed)
    assert tokens[-1] == IM_END and len(tokens) > 1, "the seed should give a turn that ends after a few tokens"
    return tok.decode(tokens[:-1], skip_special_tokens=True).strip()


@pytest.mark.parametrize("seed", [4])  # a seed whose sampled turn ends after a few tokens
def test_generate_and_eval_answers_stop_at_the_end_of_turn(end_folder, cli_main, tmp_path, seed):
    message = "Hello there."
    expected = _expected_answer(end_folder, message, seed)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": message}) + "\n")
    answers = tmp_path / "answers.jsonl"
    code, _, err = cli_main("generate", "--model", end_folder, "--prompts", prompts, "--out", answers, "--sample",
                            "--temperature", "1.0", "--seed", seed, "--max-new-tokens", "12")
    assert code == 0, err
    assert json.loads(answers.read_text())["completion"] == expected


@pytest.mark.parametrize("seed", [4])  # a seed whose sampled turn ends after a few tokens
def test_chat_stops_at_the_templates_end_of_turn(tmp_path_factory, cli_main, seed):
    # Only the template ends turns with <|im_end|>: the model itself declares <|endoftext|> alone.
    folder = tiny_model_folder(tmp_path_factory.mktemp("chat") / "model", "phi", eos_token="<|endoftext|>",
                               generation_config={"bos_token_id": 1, "eos_token_id": END_OF_TEXT,
                                                  "pad_token_id": IM_END})
    _plant_end(folder, END_PROBABILITY)
    message = "Hello there."
    expected = _expected_answer(folder, message, seed)
    code, out, err = cli_main("chat", "--model", folder, "--prompt", message, "--sample", "--temperature", "1.0",
                              "--seed", seed, "--max-new-tokens", "12")
    assert code == 0, err
    assert out.rstrip("\n") == expected
