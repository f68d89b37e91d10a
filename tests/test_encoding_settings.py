"""Issue 16, class 6: every artefact is read back in the encoding it was trained in.

The issue's reproduction on the tiny model: a reward model trained with ``data.chat_template=false``
(and a variant with a system prompt) is evaluated by ``alignkit eval rm`` on its own held-out file and
must give exactly the run's held-out accuracy; its rewards, and those of ``scorer=reward_model``,
must equal the reward model's scores of the texts encoded by hand the training way (plain text:
``[system\\n\\n]prompt\\n\\n`` then ``answer`` + EOS, no chat template) through the saved trunk and head
in float64. ``chat`` and ``generate`` read a folder's saved settings, and a run that starts from a
model trained in another encoding says so in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_generation_settings import load_plain, reference_sample

from alignkit.batches import RolloutBatch
from tiny import load_tokenizer, tiny_model_folder

SYSTEM = "You compare answers."


def _pairs(path: Path, numbers: range) -> Path:
    rows = [{"prompt": f"Question {i}: what is {i} plus {i}?", "chosen": f"It is {2 * i}.",
             "rejected": f"I will not answer question {i}."} for i in numbers]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@torch.no_grad()
def hand_rewards(final: Path, records: list[dict], system: str | None) -> list[tuple[float, float]]:
    """(chosen, rejected) scores of the saved reward model, each text encoded by hand as plain text, float64."""
    from safetensors.torch import load_file

    model, tok = load_plain(final)
    model = model.double()
    head = load_file(str(final / "reward_head.safetensors"))
    weight, bias = head["linear.weight"].double()[0], head["linear.bias"].double()[0]  # (d,), ()

    def reward(prompt: str, answer: str) -> float:
        text = (f"{system}\n\n" if system else "") + f"{prompt}\n\n"
        ids = (tok(text, add_special_tokens=False)["input_ids"] + tok(answer, add_special_tokens=False)["input_ids"]
               + [tok.eos_token_id])
        last = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]  # (d,)
        return float(last @ weight + bias)

    return [(reward(r["prompt"], r["chosen"]), reward(r["prompt"], r["rejected"])) for r in records]


@pytest.mark.parametrize("system", [None, SYSTEM], ids=["plain", "plain+system"])
def test_eval_rm_and_the_scorer_read_a_plain_text_reward_model_as_trained(alignkit_run, cli_main, tmp_path, system):
    from omegaconf import OmegaConf

    from alignkit.plugin_manager import get_manager

    train, held = _pairs(tmp_path / "train.jsonl", range(8)), _pairs(tmp_path / "held.jsonl", range(8, 13))
    run_dir = tmp_path / "rm"
    extra = [f"data.system_prompt='{system}'"] if system else []
    alignkit_run("method=reward_model", "data=custom", f"data.path={train}", f"data.eval_path={held}",
                 "data.format=pairwise", "data.chat_template=false", "trainer.max_steps=3", "trainer.batch_size=2",
                 "trainer.save_every=2", "trainer.eval_every=0", *extra, run_dir=run_dir)
    final = run_dir / "final"
    code, _, err = cli_main("eval", "rm", "--model", run_dir, "--data", held, "--out", tmp_path / "eval")
    assert code == 0, err
    assert "differ" not in err  # nothing overridden, nothing reported
    result = json.loads((tmp_path / "eval" / "results.json").read_text())
    own = json.loads((run_dir / "summary.json").read_text())["eval_after"]
    assert result["accuracy"] == own["accuracy"] and result["pairs"] == own["pairs"] == 5
    assert result["margin"] == pytest.approx(own["margin"], abs=1e-5)

    records = [json.loads(line) for line in held.read_text().splitlines()]
    expected = hand_rewards(final, records, system)
    rows = [json.loads(line) for line in (tmp_path / "eval" / "scores.jsonl").read_text().splitlines()]
    assert [(r["chosen_reward"], r["rejected_reward"]) for r in rows] == [
        (pytest.approx(c, abs=1e-5), pytest.approx(x, abs=1e-5)) for c, x in expected]
    for folder in (final, run_dir / "checkpoints" / "step-000002" / "model"):  # saved with every artefact
        saved = json.loads((folder / "alignkit_encoding.json").read_text())
        assert saved["chat_template"] is False and saved["system_prompt"] == system

    # scorer=reward_model (what PPO / REINFORCE / eval winrate use) scores the same texts the same way.
    spec = get_manager().registry.get("scorers", "reward_model", where="test")
    lines: list[str] = []
    ctx = SimpleNamespace(device=torch.device("cpu"), log=lines.append)
    scorer = spec.build(ctx, OmegaConf.merge(OmegaConf.structured(spec.schema), {"path": str(run_dir)}))
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in records]
    scores = scorer(RolloutBatch.from_texts(prompts, [r["chosen"] for r in records]))  # (5,)
    assert scores.tolist() == pytest.approx([c for c, _ in expected], abs=1e-5)
    assert lines == []

    # An explicit option that differs from the saved settings is used and reported in one line.
    override = spec.build(ctx, OmegaConf.merge(OmegaConf.structured(spec.schema),
                                               {"path": str(run_dir), "system_prompt": "Another system prompt."}))
    assert len(lines) == 1 and "data.system_prompt='Another system prompt.'" in lines[0] and "\n" not in lines[0]
    assert override.encoding.system_prompt == "Another system prompt."


@pytest.fixture(scope="module")
def plain_folder(tmp_path_factory) -> Path:
    """A tiny untied Llama whose saved encoding says: plain text, with a system prompt (written by hand)."""
    folder = tiny_model_folder(tmp_path_factory.mktemp("plain") / "model", "llama", config={"tie_word_embeddings": False})
    (folder / "alignkit_encoding.json").write_text(json.dumps({
        "format": "alignkit-encoding", "version": 1, "chat_template": False, "system_prompt": SYSTEM, "max_length": 512,
        "max_prompt_length": 256, "truncation": "left", "conditioning": None, "tokenizer": None}))
    return folder


def _plain_greedy(folder: Path, text: str) -> str:
    model, tok = load_plain(folder)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    (tokens,) = reference_sample(model, ids, rows=1, steps=6, end_ids={tok.eos_token_id}, pad_id=tok.pad_token_id,
                                 greedy=True)
    return tok.decode([t for t in tokens if t != tok.eos_token_id], skip_special_tokens=True).strip()


def test_chat_and_generate_encode_prompts_as_the_model_was_trained(plain_folder, cli_main, tmp_path):
    question = "Which river is longest?"
    expected = _plain_greedy(plain_folder, f"{SYSTEM}\n\n{question}\n\n")
    assert expected
    code, out, err = cli_main("chat", "--model", plain_folder, "--prompt", question, "--max-new-tokens", "6")
    assert code == 0, err
    assert out.rstrip("\n") == expected and "differ" not in err

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": question}) + "\n")
    answers = tmp_path / "answers.jsonl"
    code, _, err = cli_main("generate", "--model", plain_folder, "--prompts", prompts, "--out", answers,
                            "--max-new-tokens", "6")
    assert code == 0, err
    assert json.loads(answers.read_text())["completion"] == expected

    # An explicit --system that differs is used, and reported in one line.
    code, out, err = cli_main("chat", "--model", plain_folder, "--prompt", question, "--max-new-tokens", "6",
                              "--system", "Be terse.")
    assert code == 0, err
    assert out.rstrip("\n") == _plain_greedy(plain_folder, f"Be terse.\n\n{question}\n\n")
    reports = [line for line in err.splitlines() if "differs" in line]
    assert len(reports) == 1 and "data.system_prompt='Be terse.'" in reports[0]


def test_a_run_starting_from_a_model_trained_otherwise_says_so(alignkit_run, sft_file, tmp_path, capfd):
    from omegaconf import OmegaConf

    from alignkit.encoding import report_start_model
    from alignkit.plugin_manager import get_manager

    first = tmp_path / "plain"
    common = ["method=sft", "data=custom", f"data.path={sft_file}", "data.format=prompt_completion",
              "trainer.max_steps=1", "trainer.batch_size=2", "trainer.eval_every=0"]
    alignkit_run(*common, "data.chat_template=false", run_dir=first)
    capfd.readouterr()
    alignkit_run(*common, f"model.path={first}", run_dir=tmp_path / "chat")
    out = capfd.readouterr().out
    reports = [line for line in out.splitlines() if line.startswith("encoding: model.path=")]
    assert len(reports) == 1
    assert "data.chat_template=false" in reports[0] and "data.chat_template=true" in reports[0]

    # Starting in the same encoding reports nothing.
    cfg = OmegaConf.create({"model": {"path": str(first)}, "method": {"name": "sft"},
                            "data": {"chat_template": False, "system_prompt": None, "max_length": 512,
                                     "max_prompt_length": 256, "truncation": "left"}})
    lines: list[str] = []
    _, tokenizer = load_plain(first / "final")
    ctx = SimpleNamespace(cfg=cfg, tokenizer=tokenizer, registry=get_manager().registry, log=lines.append)
    assert report_start_model(ctx) == [] and lines == []


def test_a_folder_without_settings_keeps_the_defaults_and_a_broken_file_is_one_line(tmp_path):
    from alignkit.encoding import EncodingSettings, prompt_encoding
    from alignkit.errors import ModelError

    tok = load_tokenizer()
    assert EncodingSettings.from_folder(tmp_path) is None
    settings = prompt_encoding(tok, None, None, default_cap=512, where="x", source="y")
    assert (settings.chat_template, settings.system_prompt, settings.max_prompt_length) == (True, None, 512)
    (tmp_path / "alignkit_encoding.json").write_text("{not json")
    with pytest.raises(ModelError) as info:
        EncodingSettings.from_folder(tmp_path)
    assert "alignkit_encoding.json" in str(info.value) and "\n" not in str(info.value)
