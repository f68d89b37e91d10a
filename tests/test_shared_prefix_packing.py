"""Shared-prefix packing (alignkit.shared_prefix, alignkit.logprobs): rows that repeat a prompt run it once,
and every log-prob, hidden state and gradient is the row-by-row one (float64 references, computed here)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignkit import logprobs
from alignkit.batches import PairBatch, RankedBatch, RolloutBatch
from alignkit.logprobs import PolicyModule, hidden_states, token_stats, token_stats_with_hidden
from alignkit.memory import enable_activation_checkpointing
from alignkit.shared_prefix import PADDING, PREFIX, pack_shared_prefixes
from tiny import tiny_model_folder

TEMPERATURE = 0.7


def _rows(vocab: int, prompt_lengths=(7, 4, 9), k: int = 3, seed: int = 0):
    """k rows per prompt (prompt + 1..5 random tokens), right-padded; labels on the completions only."""
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(3, vocab, (n,), generator=gen) for n in prompt_lengths]
    rows, groups = [], []
    for g, prompt in enumerate(prompts):
        for _ in range(k):
            extra = int(torch.randint(1, 6, (), generator=gen))
            rows.append(torch.cat([prompt, torch.randint(3, vocab, (extra,), generator=gen)]))
            groups.append(g)
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    labels = ids.masked_fill(mask == 0, -100)
    for i, g in enumerate(groups):
        labels[i, : len(prompts[g])] = -100
    return ids, mask, labels, torch.tensor(groups), rows


def _model(tmp_path, arch="llama", **config):
    folder = tiny_model_folder(tmp_path / arch, arch, config=config or None)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _reference_sums(model, rows, labels, temperature=TEMPERATURE):
    """Σ_t log p(label_t) per row from a float64 copy of ``model`` run on each unpadded row alone."""
    wide = copy.deepcopy(model).double()
    sums = []
    with torch.no_grad():
        for i, row in enumerate(rows):
            logits = wide(input_ids=row[None]).logits[0, :-1] / temperature  # (n-1, V)
            target = labels[i, 1: len(row)]  # (n-1,)
            scored = target != -100
            logp = torch.log_softmax(logits, dim=-1)[scored].gather(1, target[scored, None])  # (m, 1)
            sums.append(logp.sum())
    return torch.stack(sums)  # (N,)


def _embedded_shapes(model):
    shapes = []
    model.get_input_embeddings().register_forward_hook(lambda module, args, out: shapes.append(tuple(args[0].shape)))
    return shapes


# ---------------------------------------------------------------------------------------------- layout
def test_the_layout_by_hand():
    ids = torch.tensor([[5, 6, 7, 8, 0], [5, 6, 9, 0, 0], [1, 2, 3, 4, 5]])  # rows 0, 1 share [5, 6]
    mask = (ids != 0).long()
    packed = pack_shared_prefixes(ids, mask, torch.tensor([0, 0, 1]))
    # group 0: [5 6 | 7 8 | 9], group 1 (one row): [1 2 3 4 | 5]; L = 5
    assert packed.input_ids.tolist() == [[5, 6, 7, 8, 9], [1, 2, 3, 4, 5]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 2], [0, 1, 2, 3, 4]]
    assert packed.segment.tolist() == [[PREFIX, PREFIX, 0, 0, 1], [PREFIX] * 4 + [2]]
    assert packed.source.tolist() == [[0, 1, 2, 3, -1], [0, 1, 4, -1, -1], [5, 6, 7, 8, 9]]
    allowed = packed.allowed()[0, 0].int().tolist()  # group 0: row 1's token (col 4) sees the prefix and itself
    assert allowed == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 1]]
    additive = packed.attention_mask(torch.float32)[0, 0]
    assert additive[4, 2] == torch.finfo(torch.float32).min and additive[4, 1] == 0


def test_a_group_is_at_most_one_token_short_of_its_shortest_row_and_padding_sees_only_padding():
    ids = torch.tensor([[5, 6, 7], [5, 6, 7], [5, 6, 7]])  # identical rows: the prefix stops one short
    mask = torch.ones_like(ids)
    packed = pack_shared_prefixes(ids, mask, torch.tensor([0, 0, 0]))
    assert packed.segment.tolist() == [[PREFIX, PREFIX, 0, 1, 2]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 2, 2]]
    ragged = pack_shared_prefixes(torch.tensor([[5, 6, 7, 8], [5, 6, 9, 0], [1, 2, 3, 4], [1, 2, 4, 0]]),
                                  torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]]),
                                  torch.tensor([0, 0, 1, 1]))
    assert ragged.segment[0].tolist() == [PREFIX, PREFIX, 0, 0, 1] and ragged.segment.shape == (2, 5)
    one = pack_shared_prefixes(torch.tensor([[5, 6, 7, 8], [5, 9, 0, 0], [5, 6, 7, 8]]),
                               torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]]), torch.tensor([0, 1, 0]))
    assert one.segment[1].tolist()[:2] == [PREFIX, 1] and set(one.segment[1].tolist()[2:]) == {PADDING}
    allowed = one.allowed()[1, 0]
    assert bool(allowed[3, 3]) and not bool(allowed[3, :2].any())  # a padding query: itself (and padding) only


def test_a_wrong_hint_still_packs_correctly(tmp_path):
    """Rows grouped that share nothing are packed side by side (prefix of length 0): values unchanged."""
    model = _model(tmp_path)
    ids, mask, labels, _, rows = _rows(model.config.vocab_size)
    wrong = torch.zeros(len(rows), dtype=torch.long)  # one group of all rows, three different prompts
    packed = pack_shared_prefixes(ids[[0, 3]], mask[[0, 3]], wrong[:2])
    assert packed is not None and (packed.segment[0] == PREFIX).sum() == 0
    stats = token_stats(model, ids[[0, 3]], mask[[0, 3]], labels[[0, 3]], temperature=TEMPERATURE, prefix_groups=wrong[:2])
    want = _reference_sums(model, [rows[0], rows[3]], labels[[0, 3]])
    torch.testing.assert_close(stats.sum.double(), want, atol=1e-5, rtol=1e-5)


def test_no_packing_when_it_does_not_pay():
    ids = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])
    mask = torch.ones_like(ids)
    assert pack_shared_prefixes(ids, mask, torch.tensor([0, 1])) is None  # no group of two
    left = torch.tensor([[0, 5, 6, 7], [5, 6, 7, 8]])
    assert pack_shared_prefixes(left, (left != 0).long(), torch.tensor([0, 0])) is None  # left padding
    apart = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])  # nothing shared: 8 packed tokens > 0.9 · 2 · 4
    assert pack_shared_prefixes(apart, torch.ones_like(apart), torch.tensor([0, 0])) is None
    # 4 rows of 100 shared + 100 own tokens: 500 packed tokens < 0.9 · 800, but 500² pairs > 4 · 200²
    long = torch.cat([torch.full((4, 100), 5), torch.arange(4 * 100).view(4, 100) + 10], dim=1)
    assert pack_shared_prefixes(long, torch.ones_like(long), torch.zeros(4, dtype=torch.long)) is not None
    assert pack_shared_prefixes(long, torch.ones_like(long), torch.zeros(4, dtype=torch.long), pair_cost=1.0) is None


# ---------------------------------------------------------------------------------------------- values
@pytest.mark.parametrize("arch", ["llama", "phi", "granite", "cohere"])
def test_packed_logprobs_equal_each_row_alone_in_float64(tmp_path, arch):
    model = _model(tmp_path, arch)
    ids, mask, labels, groups, rows = _rows(model.config.vocab_size)
    shapes = _embedded_shapes(model)
    stats = token_stats(model, ids, mask, labels, temperature=TEMPERATURE, prefix_groups=groups)
    assert shapes[-1][0] == 3 and shapes[-1][1] < ids.shape[1] * 3  # one packed sequence per prompt
    torch.testing.assert_close(stats.sum.double(), _reference_sums(model, rows, labels), atol=1e-5, rtol=1e-5)
    plain = token_stats(model, ids, mask, labels, temperature=TEMPERATURE)
    torch.testing.assert_close(stats.logprobs, plain.logprobs, atol=1e-5, rtol=1e-5)
    assert torch.equal(stats.count, plain.count)


def test_packed_hidden_states_equal_the_rows_and_are_zero_on_padding(tmp_path):
    model = _model(tmp_path)
    ids, mask, labels, groups, rows = _rows(model.config.vocab_size)
    wide = copy.deepcopy(model).double()
    with torch.no_grad():
        got = hidden_states(model, ids, mask, groups)  # (N, T, d)
        _, with_stats = token_stats_with_hidden(model, ids, mask, labels, prefix_groups=groups)
        for i, row in enumerate(rows):
            want = wide.get_decoder()(input_ids=row[None]).last_hidden_state[0]  # (n, d)
            torch.testing.assert_close(got[i, : len(row)].double(), want, atol=1e-5, rtol=1e-5)
            assert not got[i, len(row):].any()
    assert torch.equal(got, with_stats)


def test_gradients_equal_each_row_alone_in_float64(tmp_path):
    model = _model(tmp_path)
    model.train()
    ids, mask, labels, groups, rows = _rows(model.config.vocab_size)
    weights = torch.linspace(-1.0, 2.0, len(rows))  # (N,) a different weight per row: an advantage
    (token_stats(model, ids, mask, labels, temperature=TEMPERATURE, prefix_groups=groups).sum * weights).sum().backward()
    wide = copy.deepcopy(model).double()
    wide.zero_grad()
    total = 0
    for i, row in enumerate(rows):
        logits = wide(input_ids=row[None]).logits[0, :-1] / TEMPERATURE
        target = labels[i, 1: len(row)]
        scored = target != -100
        total = total + weights[i].double() * torch.log_softmax(logits, -1)[scored].gather(1, target[scored, None]).sum()
    total.backward()
    for (name, p), (_, q) in zip(model.named_parameters(), wide.named_parameters()):
        torch.testing.assert_close(p.grad.double(), q.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_activation_checkpointing_and_no_grad_give_the_same_packed_values(tmp_path):
    """The policy pass (grad, checkpointed layers) and a reference copy (no grad) agree bitwise: a first
    KL is exactly 0 and a first ratio exactly 1."""
    model = _model(tmp_path)
    reference = copy.deepcopy(model).requires_grad_(False)
    model.train()
    assert enable_activation_checkpointing(model, 1) > 0
    ids, mask, labels, groups, _ = _rows(model.config.vocab_size)
    policy = PolicyModule(model)
    stats = policy(ids, mask, labels, TEMPERATURE, prefix_groups=groups)
    stats.sum.sum().backward()
    with torch.no_grad():
        ref = PolicyModule(reference)(ids, mask, labels, TEMPERATURE, prefix_groups=groups)
    assert torch.equal(stats.logprobs.detach(), ref.logprobs)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_eager_attention_takes_an_additive_mask(tmp_path):
    folder = tiny_model_folder(tmp_path / "eager", "llama")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    ids, mask, labels, groups, rows = _rows(model.config.vocab_size)
    shapes = _embedded_shapes(model)
    stats = token_stats(model, ids, mask, labels, temperature=TEMPERATURE, prefix_groups=groups)
    assert shapes[-1][0] == 3
    torch.testing.assert_close(stats.sum.double(), _reference_sums(model, rows, labels), atol=1e-5, rtol=1e-5)


def test_sliding_window_models_are_scored_row_by_row(tmp_path, monkeypatch):
    model = _model(tmp_path, "gemma2", sliding_window=4)
    ids, mask, labels, groups, rows = _rows(model.config.vocab_size)
    shapes = _embedded_shapes(model)
    monkeypatch.setattr(logprobs, "_LENGTH_GROUPING", 0.0)  # one padded forward of the N rows
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same values, so nothing to warn about
        stats = token_stats(model, ids, mask, labels, temperature=TEMPERATURE, prefix_groups=groups)
    assert shapes[-1] == tuple(ids.shape)  # not the packed (G, L) batch
    assert "sliding_window=4" in logprobs._packing_verdict(model).fallback
    torch.testing.assert_close(stats.sum.double(), _reference_sums(model, rows, labels), atol=1e-5, rtol=1e-5)


def test_the_switch_turns_packing_off(tmp_path, monkeypatch):
    model = _model(tmp_path)
    ids, mask, labels, groups, _ = _rows(model.config.vocab_size)
    shapes = _embedded_shapes(model)
    monkeypatch.setattr(logprobs, "_SHARED_PREFIX", True)
    monkeypatch.setattr(logprobs, "_LENGTH_GROUPING", 0.0)
    logprobs.set_shared_prefix(False)
    token_stats(model, ids, mask, labels, prefix_groups=groups)
    assert shapes[-1] == tuple(ids.shape)


# ---------------------------------------------------------------------------------------------- batches
def test_batches_name_the_rows_that_repeat_a_prompt():
    ids = torch.ones(6, 4, dtype=torch.long)
    rollout = RolloutBatch(input_ids=ids, attention_mask=ids, labels=ids, group=torch.tensor([0, 0, 0, 1, 1, 1]),
                           num_prompts=2, k=3)
    assert rollout.prefix_groups().tolist() == [0, 0, 0, 1, 1, 1]
    single = RolloutBatch(input_ids=ids, attention_mask=ids, labels=ids, group=torch.arange(6), num_prompts=6, k=1)
    assert single.prefix_groups() is None
    pairs = PairBatch(input_ids=ids, attention_mask=ids, labels=ids, num_pairs=3)
    assert pairs.prefix_groups().tolist() == [0, 1, 2, 0, 1, 2]  # chosen rows, then rejected rows
    ranked = RankedBatch(input_ids=ids[:5], attention_mask=ids[:5], labels=ids[:5],
                         ranked_mask=torch.tensor([[True, True, True], [True, True, False]]))
    assert ranked.prefix_groups().tolist() == [0, 0, 0, 1, 1]
