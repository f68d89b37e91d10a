"""A LoRA run's step checkpoints (adapter only) open wherever a model is opened by path: ``alignkit chat``,
``generate``, ``eval``, ``model.path=``; they load as the run's base model with the adapter merged in, the
same weights as a merged final model. Full (non-LoRA) checkpoints load as before, also in transformers."""

from __future__ import annotations

import json
import shutil
import types

import pytest
import torch

from alignkit.cli import main as cli_main
from alignkit.errors import ModelError
from conftest import write_jsonl

LORA = ("model.lora.r=4", "model.lora.alpha=8", "model.lora.target_modules=[q_proj,v_proj,up_proj]")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-step LoRA sft run and a 2-step full sft run on model=tiny, a checkpoint after every step."""
    from alignkit.testing import TINY_DEFAULTS, run_training

    root = tmp_path_factory.mktemp("lora_checkpoints")
    data = write_jsonl(root / "sft.jsonl", [{"prompt": f"Say the number {i}.", "completion": f"{i}"} for i in range(24)])
    prompts = write_jsonl(root / "prompts.jsonl", [{"prompt": f"Say the number {i}."} for i in range(3)])
    common = (*TINY_DEFAULTS, "method=sft", "data=custom", f"data.path={data}", "data.format=prompt_completion",
              "trainer.batch_size=4", "trainer.max_steps=2", "trainer.save_every=1", "trainer.optimizer.lr=5e-2",
              "trainer.keep_last=0")
    lora = run_training(*common, *LORA, run_dir=root / "lora").run_dir
    full = run_training(*common, run_dir=root / "full").run_dir
    return types.SimpleNamespace(root=root, lora=lora, full=full, prompts=prompts, common=common)


def _step(run, n: int):
    return run / "checkpoints" / f"step-{n:06d}"


def _load(path):
    from omegaconf import OmegaConf

    from alignkit.models import ModelConfig, load_model

    return load_model(OmegaConf.merge(OmegaConf.structured(ModelConfig), {"path": str(path)}))


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = cli_main([*map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_lora_checkpoint_loads_as_the_base_model_with_the_adapter_merged(runs, tmp_path):
    from transformers import AutoModelForCausalLM

    from alignkit.models import find_model_folder, is_adapter_folder

    checkpoint = _step(runs.lora, 2)
    assert is_adapter_folder(checkpoint / "model") and not (checkpoint / "model" / "model.safetensors").exists()
    final = _state(AutoModelForCausalLM.from_pretrained(str(runs.lora / "final")))  # saved merged by the run
    for path in (checkpoint, checkpoint / "model", runs.lora / "final" / "adapter"):
        model, tokenizer = _load(path)
        assert type(model).__name__ == "LlamaForCausalLM" and not any("lora" in k for k in model.state_dict())
        state = _state(model)
        assert state.keys() == final.keys()
        assert all(torch.equal(state[k], final[k]) for k in final), f"{path}: not the merged final weights"
        assert tokenizer.chat_template
        assert all(p.requires_grad for p in model.parameters()), "trainable, like any model loaded by path"
    first = _state(_load(_step(runs.lora, 1))[0])
    assert max((first[k] - final[k]).abs().max().item() for k in final) > 1e-3, "step 1 has its own adapter"

    assert find_model_folder(runs.lora) == runs.lora / "final"
    unfinished = tmp_path / "unfinished"  # a run without final/ (still training, or stopped): newest checkpoint
    shutil.copytree(runs.lora, unfinished, ignore=shutil.ignore_patterns("final"))
    assert find_model_folder(unfinished) == _step(unfinished, 2) / "model"
    assert all(torch.equal(v, final[k]) for k, v in _load(unfinished)[0].state_dict().items())
    alone = tmp_path / "alone"  # a checkpoint copied out of its run: its manifest names the base model
    shutil.copytree(checkpoint, alone)
    assert all(torch.equal(v, final[k]) for k, v in _load(alone)[0].state_dict().items())


def test_training_starts_from_a_lora_checkpoint_by_model_path(runs, tmp_path):
    from alignkit.testing import run_training

    common = [a for a in runs.common if not a.startswith("trainer.max_steps")]
    result = run_training(*common, f"model.path={_step(runs.lora, 2)}", "model.name=from-lora", "trainer.max_steps=1",
                          run_dir=tmp_path / "next")
    before = json.loads((runs.lora / "summary.json").read_text())["eval_after"]
    assert result.eval_before["nll"] == pytest.approx(before["nll"], abs=1e-6), "starts where the LoRA run ended"
    assert result.eval_after["nll"] != result.eval_before["nll"], "and the merged model trains"


def test_chat_generate_and_eval_on_a_lora_checkpoint_match_the_merged_model(runs, capsys, tmp_path):
    checkpoint, final = _step(runs.lora, 2), runs.lora / "final"
    replies = []
    for model in (checkpoint, final, _step(runs.lora, 1) / "model"):
        code, out, err = run_cli(capsys, "chat", "--model", model, "--prompt", "Say the number 3.", "--sample",
                                 "--max-new-tokens", "12", "--seed", "3")
        assert code == 0, err
        replies.append(out)
    assert replies[0] == replies[1] and replies[0].strip(), replies
    assert replies[2] != replies[0], "a different checkpoint answers differently"

    answers = {}
    for name, model in (("step", checkpoint), ("final", final)):
        code, out, err = run_cli(capsys, "generate", "--model", model, "--prompts", runs.prompts, "--out",
                                 tmp_path / f"{name}.jsonl", "--sample", "--max-new-tokens", "8")
        assert code == 0 and "3 answers" in out, err
        answers[name] = [json.loads(line)["completion"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert answers["step"] == answers["final"] and any(answers["step"])

    # The checkpoint plays the merged model, judged by the checkpoint itself (an LLM judge opened by path):
    # identical answers, so each presentation order is the mirror of the other and every game is a tie.
    code, out, err = run_cli(capsys, "eval", "winrate", "--policy", checkpoint, "--baseline", final, "--prompts",
                             runs.prompts, "--judge", f"judge:{checkpoint}", "--sample", "--max-new-tokens", "8",
                             "--rounds", "20", "--out", tmp_path / "winrate")
    assert code == 0, err
    result = json.loads((tmp_path / "winrate" / "results.json").read_text())
    assert result["n"] == 3 and result["win_rate"] == pytest.approx(0.5, abs=1e-12)
    rows = [json.loads(line) for line in (tmp_path / "winrate" / "judgments.jsonl").read_text().splitlines()]
    assert all(r["preference"] == pytest.approx(0.5, abs=1e-12) for r in rows)


def test_a_full_checkpoint_still_loads_directly_and_in_transformers(runs, capsys):
    from transformers import AutoModelForCausalLM

    from alignkit.models import find_model_folder

    checkpoint = _step(runs.full, 2)
    assert find_model_folder(checkpoint) == checkpoint / "model"
    plain = _state(AutoModelForCausalLM.from_pretrained(str(checkpoint / "model")))  # no alignkit involved
    final = _state(AutoModelForCausalLM.from_pretrained(str(runs.full / "final")))
    ours = _state(_load(checkpoint)[0])
    assert all(torch.equal(plain[k], final[k]) and torch.equal(ours[k], final[k]) for k in final)
    outputs = []
    for model in (checkpoint, runs.full):
        code, out, err = run_cli(capsys, "chat", "--model", model, "--prompt", "Say the number 3.", "--sample",
                                 "--max-new-tokens", "12")
        assert code == 0, err
        outputs.append(out)
    assert outputs[0] == outputs[1] and outputs[0].strip()


def test_eval_rm_on_a_lora_reward_model_checkpoint(capsys, tmp_path):
    from alignkit.testing import TINY_DEFAULTS, run_training

    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.",
                                                    "rejected": f"I will not answer {i}."} for i in range(16)])
    run = run_training(*TINY_DEFAULTS, "method=reward_model", "data=custom", f"data.path={pairs}", "data.format=pairwise",
                       "trainer.batch_size=4", "trainer.max_steps=2", "trainer.save_every=2", "trainer.optimizer.lr=1e-2",
                       *LORA, run_dir=tmp_path / "rm").run_dir
    checkpoint = _step(run, 2)
    assert {"adapter_model.safetensors", "reward_model.json"} <= {p.name for p in (checkpoint / "model").iterdir()}
    scores = {}
    for name, model in (("step", checkpoint), ("final", run / "final")):
        code, out, err = run_cli(capsys, "eval", "rm", "--model", model, "--data", pairs, "--out", tmp_path / name)
        assert code == 0 and "accuracy" in out, err
        scores[name] = [json.loads(line)["margin"] for line in (tmp_path / name / "scores.jsonl").read_text().splitlines()]
    assert len(scores["step"]) == 16 and len(set(scores["step"])) > 1
    assert scores["step"] == pytest.approx(scores["final"], abs=1e-6), "the checkpoint scores like the merged final model"


def test_a_lora_checkpoint_without_its_run_is_one_clear_error(runs, capsys, tmp_path):
    stray = tmp_path / "adapter"
    shutil.copytree(_step(runs.lora, 2) / "model", stray)  # no config.yaml above it; PEFT recorded no base path
    with pytest.raises(ModelError, match="a LoRA checkpoint whose base model cannot be found"):
        _load(stray)
    code, _, err = run_cli(capsys, "chat", "--model", stray, "--prompt", "Hi")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("alignkit: error: ") and str(stray) in lines[0], err
    code, _, err = run_cli(capsys, "generate", "--model", tmp_path / "nowhere", "--prompts", runs.prompts, "--out",
                           tmp_path / "a.jsonl")
    assert code == 2 and f"--model {tmp_path / 'nowhere'}: no such folder" in err and "Traceback" not in err
