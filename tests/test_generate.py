"""rollout=generate: where completions end, the k-samples layout, its own resumable random stream."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.batches import RolloutBatch, completion_rows
from alignkit.generation import completion_end


class _Tok:
    """Decodes token i as the character chr(96 + i) ('a' = 1); 0 is a special token."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(96 + i) for i in ids if i != 0)


def test_completion_end_eos_stop_string_and_cap():
    tok = _Tok()
    assert completion_end([3, 4, 0, 0, 0], {0}, [], tok) == (3, True)  # EOS included, padding dropped
    assert completion_end([3, 4, 5, 6], {0}, [], tok) == (4, False)  # hit the cap
    # Stop string "de" is completed by token 5 ('e'): the completion is 'c', 'd', 'e'.
    assert completion_end([3, 4, 5, 6, 0], {0}, ["de"], tok) == (3, True)
    # A stop string after the EOS does not count.
    assert completion_end([3, 0, 4, 5], {0}, ["de"], tok) == (2, True)


def test_rows_are_right_padded_with_prompt_masked():
    batch = RolloutBatch(**completion_rows([[7, 8], [9]], [[1, 2, 0], [3]], pad_id=0), group=torch.tensor([0, 1]),
                         completions=["a", "b"], k=1)
    assert batch.input_ids.tolist() == [[7, 8, 1, 2, 0], [9, 3, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch.labels.tolist() == [[-100, -100, 1, 2, 0], [-100, 3, -100, -100, -100]]
    # Log-prob position t predicts token t+1: the completion positions of row 0 are 1, 2, 3.
    assert batch.response_mask().tolist() == [[False, True, True, True], [True, False, False, False]]
    sub = batch.select(torch.tensor([1]))
    assert sub.input_ids.tolist() == [[9, 3]] and sub.completions == ["b"] and sub.k == 1


@pytest.fixture
def prompts_file(tmp_path):
    rows = [{"prompt": f"Describe thing number {i}."} for i in range(12)]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _trainer(alignkit_compose, prompts_file, tmp_path, *extra):
    from alignkit.loop import Trainer

    cfg = alignkit_compose("method=reinforce", "data=custom", f"data.path={prompts_file}", "data.format=prompts",
                           "data.eval_fraction=0.25", "scorer=function",
                           "scorer.fn=alignkit.plugins.scorers.rewards:brevity", "trainer.batch_size=2",
                           "rollout.num_samples=3", "rollout.max_new_tokens=6", *extra)
    return Trainer(cfg, tmp_path / "run")


def test_k_samples_per_prompt_layout(alignkit_compose, prompts_file, tmp_path):
    trainer = _trainer(alignkit_compose, prompts_file, tmp_path)
    batch = trainer.rollout.next_batch(trainer.policy)
    n = 2 * 3
    assert batch.input_ids.shape[0] == n and batch.num_prompts == 2 and batch.k == 3
    assert batch.group.tolist() == [0, 0, 0, 1, 1, 1]
    assert batch.prompts[0] == batch.prompts[2] != batch.prompts[3]
    assert len(batch.completions) == len(batch.prompt_text) == n
    mask = batch.response_mask()  # (N, T-1)
    lengths = mask.sum(dim=1)
    assert ((lengths >= 1) & (lengths <= 6)).all()
    eos = trainer.run.tokenizer.eos_token_id
    for row in range(n):
        completion = batch.labels[row][batch.labels[row] != -100].tolist()
        ended = bool(batch.ended[row])
        assert (completion[-1] == eos) == ended or (ended and len(completion) <= 6)
        assert eos not in completion[:-1], "nothing after the first EOS belongs to the completion"


def test_sampling_stream_is_private_and_resumable(alignkit_compose, prompts_file, tmp_path):
    trainer = _trainer(alignkit_compose, prompts_file, tmp_path)
    rollout = trainer.rollout
    state = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in rollout.state_dict().items()}
    state["rng"] = {k: v.clone() for k, v in state["rng"].items()}
    global_before = torch.get_rng_state()
    first = rollout.next_batch(trainer.policy)
    assert torch.equal(torch.get_rng_state(), global_before), "generate must not consume the global stream"
    torch.rand(10)  # other code drawing random numbers in between changes nothing
    rollout.load_state_dict(state)
    again = rollout.next_batch(trainer.policy)
    assert torch.equal(first.input_ids, again.input_ids) and first.index.tolist() == again.index.tolist()
    # Evaluation uses its fixed seed: two evaluations of the same policy sample the same completions.
    one = [b.completions for b in rollout.eval_batches()]
    two = [b.completions for b in rollout.eval_batches()]
    assert one == two


def test_truncated_sampling_warns_about_bias(alignkit_compose, prompts_file, tmp_path):
    with pytest.warns(RuntimeWarning, match="biased"):
        _trainer(alignkit_compose, prompts_file, tmp_path, "rollout.top_p=0.9")


def test_stop_strings_end_completions(alignkit_compose, prompts_file, tmp_path):
    trainer = _trainer(alignkit_compose, prompts_file, tmp_path, "rollout.stop=[e]", "rollout.max_new_tokens=12")
    batch = trainer.rollout.next_batch(trainer.policy)
    decode = lambda ids: trainer.run.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    stopped = 0
    for row, text in enumerate(batch.completions):
        tokens = batch.labels[row][batch.labels[row] != -100].tolist()
        if "e" in text:
            # The completion ends with the token that completed the stop string, not later.
            assert "e" not in decode(tokens[:-1]) and bool(batch.ended[row]), text
            stopped += 1
    assert stopped > 0, "the random tiny model should produce an 'e' within 12 tokens"
