"""Sampling completions with Hugging Face ``generate``: exactly what is configured, cut at the end of the turn.

Every place alignkit generates text (the training rollout ``rollout=generate``, ``alignkit chat``,
``alignkit generate`` and ``eval winrate|elo``, CAI's data stages, ``steerlm measure``) goes through
this module, so three rules hold everywhere:

1. **Only the configured distribution.** transformers 5 fills every field that a passed
   ``GenerationConfig`` leaves ``None`` from ``model.generation_config`` (``GenerationMixin.
   _prepare_generation_config``), so a model folder's ``generation_config.json`` would silently add
   ``repetition_penalty``, ``suppress_tokens``, ``no_repeat_ngram_size``, ``top_k=50``... to sampling.
   :func:`generation_config` builds the whole config from :class:`SamplingSettings`, and
   :func:`own_generation_defaults` puts a neutral ``GenerationConfig()`` in place of the model's for
   the call, so nothing is inherited. Options that make sampling differ from the temperature-scaled
   softmax (truncation, repetition penalties, suppressed or banned tokens, a minimum length) exist
   only as explicit settings; :func:`distorting_options` names those that are set.
2. **Every end of turn.** :func:`end_token_ids` collects every id that ends an assistant turn: the
   tokenizer's EOS, the model's ``generation_config.eos_token_id`` and ``config.eos_token_id`` (an int
   or a list: Llama 3 and Gemma ship several) and the chat template's end-of-turn token
   (:func:`turn_end_token_id`: ChatML ``<|im_end|>``, Gemma ``<end_of_turn>``, Llama 3 ``<|eot_id|>``).
   Generation stops at any of them.
3. **One cut.** :func:`cut_completion` ends a row at its first end id (or the token completing a stop
   string): the end token stays in the training tokens (the policy learns to stop) and is removed from
   the decoded text (what scorers, judges and users read).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterator, Sequence

import torch

#: The assistant text rendered to find the chat template's end-of-turn token (any plain word works).
_PROBE = "Okay"


# ----------------------------------------------------------------------------- end of turn
def _add_ids(ids: set[int], value: Any) -> None:
    if value is None:
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        ids.update(int(v) for v in value if v is not None)
    elif isinstance(value, torch.Tensor):
        ids.update(int(v) for v in value.flatten().tolist())
    else:
        ids.add(int(value))


def _is_special(tokenizer: Any, token_id: int) -> bool:
    if token_id in set(getattr(tokenizer, "all_special_ids", []) or []):
        return True
    added = (getattr(tokenizer, "added_tokens_decoder", None) or {}).get(token_id)
    return bool(getattr(added, "special", False))


def turn_end_token_id(tokenizer: Any) -> int | None:
    """The special token the chat template writes right after an assistant message, or None.

    Renders ``[user: "Hi", assistant: "Okay"]`` with the template and tokenizes what follows the
    assistant text (leading whitespace dropped); its first token is the end-of-turn token if it is a
    special token (ChatML ``<|im_end|>``, Gemma ``<end_of_turn>``, Llama 3 ``<|eot_id|>``, Llama 2
    ``</s>``). Templates that end turns with plain text, or cannot render this exchange, give None.
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"},
                                              {"role": "assistant", "content": _PROBE}], tokenize=False)
    except Exception:  # noqa: BLE001 - jinja errors of templates with other rules (roles, tools, ...)
        return None
    at = text.rfind(_PROBE) if isinstance(text, str) else -1
    rest = text[at + len(_PROBE):].lstrip() if at >= 0 else ""
    if not rest:
        return None
    ids = tokenizer(rest, add_special_tokens=False)["input_ids"]
    return int(ids[0]) if ids and _is_special(tokenizer, int(ids[0])) else None


def _declaring_model(model: Any) -> Any:
    # DDP / FSDP / DeepSpeed / PolicyModule keep the HF model in ``.module``; PEFT forwards attributes.
    for _ in range(8):
        if hasattr(model, "generation_config") or not hasattr(model, "module"):
            return model
        model = model.module
    return model


def end_token_ids(tokenizer: Any, model: Any = None) -> frozenset[int]:
    """Every token id that ends an assistant turn for this tokenizer and model.

    The union of ``tokenizer.eos_token_id``, the model's ``generation_config.eos_token_id`` and
    ``config.eos_token_id`` (each an int or a list) and the chat template's end-of-turn token
    (:func:`turn_end_token_id`). A chat model whose tokenizer EOS is ``<|endoftext|>`` but whose
    turns end with ``<|im_end|>`` (``generation_config.eos_token_id: [0, 2]``) thus stops at both.

    Args:
        tokenizer: a Hugging Face tokenizer.
        model: the causal LM (possibly wrapped by DDP / FSDP / PEFT / ``PolicyModule``), or None.

    Returns:
        The ids, possibly empty for a tokenizer without EOS, template or declaring model.
    """
    ids: set[int] = set()
    _add_ids(ids, getattr(tokenizer, "eos_token_id", None))
    if model is not None:
        declaring = _declaring_model(model)
        for source in (getattr(declaring, "generation_config", None), getattr(declaring, "config", None)):
            _add_ids(ids, getattr(source, "eos_token_id", None))
    turn_end = turn_end_token_id(tokenizer)
    if turn_end is not None:
        ids.add(turn_end)
    return frozenset(ids)


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class SamplingSettings:
    """How completions are decoded; nothing else reaches ``generate``.

    Attributes:
        max_new_tokens: cap on generated tokens; a row that hits it has not ended.
        greedy: argmax decoding (the sampling options below are then unused).
        temperature: softmax temperature (> 0) when sampling.
        top_p: nucleus sampling (1 = off). Truncates the distribution.
        top_k: top-k sampling (0 = off). Truncates the distribution.
        stop: stop strings; a row ends with the token that completes one.
        repetition_penalty: CTRL penalty (Keskar et al. 2019): logits of tokens already in the sequence
            are divided by it (multiplied when negative); 1 = off. Changes the distribution.
        no_repeat_ngram_size: forbid repeating any n-gram of this size (0 = off). Changes the distribution.
        min_new_tokens: end tokens are forbidden before this many tokens (0 = off). Changes the distribution.
        suppress_tokens: token ids that are never generated. Changes the distribution.
        bad_words: strings whose token sequences (as the tokenizer encodes each string alone) are
            never generated. Changes the distribution.
        repetition_guard: stop a row once a passage of generated tokens has come this many times in
            a row (:func:`repetition_cut`; 0 = off, else ≥ 2) and keep its first copy; the completion's
            ``finish_reason`` is then ``repetition``. Leaves every drawn token's distribution as it is,
            but ends rows early: for reading answers (``chat``, ``generate``), not for training rollouts.
    """

    max_new_tokens: int = 128
    greedy: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0
    suppress_tokens: tuple[int, ...] = ()
    bad_words: tuple[str, ...] = ()
    repetition_guard: int = 0

    def __post_init__(self) -> None:
        # Lists from configs become tuples, so settings stay hashable and immutable.
        for name in ("stop", "suppress_tokens", "bad_words"):
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))
        if self.repetition_guard == 1 or self.repetition_guard < 0:
            raise ValueError(f"repetition_guard must be 0 (off) or >= 2 repeats (got {self.repetition_guard})")


def distorting_options(settings: SamplingSettings) -> list[str]:
    """``name=value`` of every set option that makes sampling differ from softmax(logits / T).

    Empty for plain temperature sampling. A policy gradient computed with the log-probs of that
    softmax is biased when this is not empty (the samples come from another distribution).
    """
    s = settings
    found = [f"top_p={s.top_p:g}" if s.top_p < 1 else "", f"top_k={s.top_k}" if s.top_k > 0 else "",
             f"repetition_penalty={s.repetition_penalty:g}" if s.repetition_penalty != 1 else "",
             f"no_repeat_ngram_size={s.no_repeat_ngram_size}" if s.no_repeat_ngram_size > 0 else "",
             f"min_new_tokens={s.min_new_tokens}" if s.min_new_tokens > 0 else "",
             f"suppress_tokens=<{len(s.suppress_tokens)} ids>" if s.suppress_tokens else "",
             f"bad_words={list(s.bad_words)}" if s.bad_words else "",
             f"repetition_guard={s.repetition_guard}" if s.repetition_guard else ""]
    return [f for f in found if f]


def generation_config(settings: SamplingSettings, end_ids: Collection[int], pad_id: int, tokenizer: Any = None) -> Any:
    """The complete ``transformers.GenerationConfig`` of ``settings``: every processor field set.

    Neutral values are written out for the options left off, so even a ``generate`` that merged the
    model's own config would find nothing unset to fill (:func:`own_generation_defaults` also
    prevents the merge).

    Args:
        settings: what to decode.
        end_ids: ids that end a row (:func:`end_token_ids`); generation stops at any of them.
        pad_id: id written after a row ended.
        tokenizer: needed only for ``settings.bad_words``.

    Raises:
        ValueError: ``bad_words`` without a tokenizer.
    """
    from transformers import GenerationConfig

    s = settings
    bad_words_ids = None
    if s.bad_words:
        if tokenizer is None:
            raise ValueError("bad_words needs the tokenizer to encode them")
        bad_words_ids = [list(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in s.bad_words]
    options: dict[str, Any] = {
        "max_new_tokens": s.max_new_tokens, "pad_token_id": pad_id, "eos_token_id": sorted(end_ids),
        "use_cache": True, "num_beams": 1, "num_return_sequences": 1,
        "repetition_penalty": float(s.repetition_penalty), "no_repeat_ngram_size": int(s.no_repeat_ngram_size),
        "min_new_tokens": int(s.min_new_tokens) or None, "min_length": 0,
        "suppress_tokens": list(s.suppress_tokens) or None, "bad_words_ids": bad_words_ids,
        "begin_suppress_tokens": None, "sequence_bias": None, "forced_bos_token_id": None,
        "forced_eos_token_id": None, "encoder_repetition_penalty": 1.0, "length_penalty": 1.0,
        "renormalize_logits": False, "remove_invalid_values": False,
    }
    if s.greedy:
        options["do_sample"] = False
    else:
        options.update(do_sample=True, temperature=float(s.temperature), top_p=float(s.top_p), top_k=int(s.top_k),
                       min_p=None, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0)
    if s.stop:
        options["stop_strings"] = list(s.stop)
    return GenerationConfig(**options)


@contextlib.contextmanager
def own_generation_defaults(model: Any) -> Iterator[None]:
    """Within the block, ``generate`` of ``model`` inherits nothing from its ``generation_config``.

    Every (sub)module holding a ``generation_config`` (the HF model inside DDP / FSDP / PEFT /
    ``PolicyModule`` wrappers) gets a neutral ``GenerationConfig()`` instead; the originals are put
    back afterwards, also on error.
    """
    from transformers import GenerationConfig

    swapped = []
    modules = model.modules() if isinstance(model, torch.nn.Module) else [model]
    for module in modules:
        current = module.__dict__.get("generation_config")
        if isinstance(current, GenerationConfig):
            swapped.append((module, current))
            module.generation_config = GenerationConfig()
    try:
        yield
    finally:
        for module, original in swapped:
            module.generation_config = original


# ----------------------------------------------------------------------------- cutting
def completion_end(tokens: Sequence[int], end_ids: Collection[int], stop: Sequence[str], tokenizer: Any
                   ) -> tuple[int, bool]:
    """Number of generated tokens that belong to the completion, and whether it ended on its own.

    Args:
        tokens: the generated token ids of one row (after the prompt), padding included.
        end_ids: ids that end a turn (:func:`end_token_ids`); the first one is part of the completion.
        stop: stop strings; the completion ends with the token that completes the first one.
        tokenizer: decodes tokens to find stop strings.

    Returns:
        (length, ended): ``tokens[:length]`` is the completion; ``ended`` is False when it hit the cap.
    """
    end = next((i + 1 for i, t in enumerate(tokens) if t in end_ids), None)
    if stop:
        head = list(tokens[: end if end is not None else len(tokens)])
        text = tokenizer.decode(head, skip_special_tokens=True)
        if any(s in text for s in stop):
            # The shortest prefix whose text holds a stop string: the token that completed it ends the row.
            for n in range(1, len(head) + 1):
                if any(s in tokenizer.decode(head[:n], skip_special_tokens=True) for s in stop):
                    return n, True
    if end is not None:
        return end, True
    return len(tokens), False


#: Fewest tokens a passage and its repeats must span before :func:`repetition_cut` calls it a loop
#: (so a short list marker or "ha ha" is not one).
REPEAT_MIN_SPAN = 32
#: Longest passage (tokens) whose repeats :func:`repetition_cut` looks for.
REPEAT_MAX_PERIOD = 64


def repetition_cut(tokens: Sequence[int], repeats: int, *, min_span: int = REPEAT_MIN_SPAN,
                   max_period: int = REPEAT_MAX_PERIOD) -> int | None:
    """Where a row that started looping is cut: the length that keeps the looping passage's first copy.

    A row loops at token j when, for some period p ≤ ``max_period``, tokens j − p·repeats + 1 .. j are
    ``repeats`` copies of one p-token passage (tokens[i] == tokens[i − p] for the last p·(repeats − 1)
    tokens) spanning p·repeats ≥ ``min_span`` tokens. The first such j (smallest, then smallest p) decides.

    Args:
        tokens: generated token ids of one row (no prompt).
        repeats: copies in a row that make a loop (≥ 2).
        min_span, max_period: see above.

    Returns:
        j + 1 − p·(repeats − 1) (the tokens up to the end of the first copy), or None when it never loops.
    """
    run = [0] * (max_period + 1)  # run[p]: consecutive i ending here with tokens[i] == tokens[i - p]
    for j in range(1, len(tokens)):
        for p in range(1, min(max_period, j) + 1):
            if tokens[j] != tokens[j - p]:
                run[p] = 0
                continue
            run[p] += 1
            if run[p] >= p * (repeats - 1) and p * repeats >= min_span:
                return j + 1 - p * (repeats - 1)
    return None


def repetition_stop(prompt_width: int, repeats: int, *, min_span: int = REPEAT_MIN_SPAN,
                    max_period: int = REPEAT_MAX_PERIOD) -> Any:
    """A ``transformers.StoppingCriteria`` that ends each row at the token where :func:`repetition_cut` finds a loop.

    It keeps run[n, p] (the :func:`repetition_cut` counters of every row, (N, P)) and updates them with
    each new token, so a step costs O(N·P); :func:`cut_completion` then cuts the row with
    :func:`repetition_cut` itself (the same rule). ``prompt_width``: columns of the (left-padded)
    prompt in ``input_ids``; only generated tokens are compared.
    """
    from transformers import StoppingCriteria

    class RepetitionStop(StoppingCriteria):
        def __init__(self) -> None:
            self.run: torch.Tensor | None = None  # (N, P)

        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            generated = input_ids.shape[1] - prompt_width  # tokens generated so far, the new one included
            periods = torch.arange(1, max_period + 1, device=input_ids.device)  # (P,)
            if self.run is None:
                self.run = torch.zeros(input_ids.shape[0], max_period, dtype=torch.long, device=input_ids.device)
            columns = (input_ids.shape[1] - 1 - periods).clamp(min=0)  # (P,) column of token j - p
            same = (input_ids[:, columns] == input_ids[:, -1:]) & (periods < generated)  # (N, P)
            self.run = (self.run + 1) * same
            hit = (self.run >= periods * (repeats - 1)) & (periods * repeats >= min_span)  # (N, P)
            return hit.any(dim=1)  # (N,)

    return RepetitionStop()


@dataclass(frozen=True)
class Completion:
    """One generated row, cut where it ended.

    Attributes:
        tokens: the completion as trained on: generated tokens up to and including the first end
            token (or the token that completed a stop string); everything after it is dropped.
        content: ``tokens`` without a final end token (what the text is decoded from).
        text: ``content`` decoded with special tokens skipped (what scorers and users read).
        ended: stopped on its own (end token or stop string) before ``max_new_tokens``.
        logprobs: log π(y_t) of each of ``tokens`` under the distribution the engine sampled from
            (temperature and truncation applied), as the engine computed it; None when not recorded.
    """

    tokens: list[int]
    content: list[int]
    text: str
    ended: bool
    logprobs: list[float] | None = None
    repeated: bool = False

    @property
    def finish_reason(self) -> str:
        """``stop`` (ended on its own), ``length`` (cut by ``max_new_tokens``; names as vLLM and OpenAI
        use them) or ``repetition`` (stopped by the repetition guard, ``SamplingSettings.repetition_guard``)."""
        return "repetition" if self.repeated else "stop" if self.ended else "length"


def cut_completion(tokens: Sequence[int], end_ids: Collection[int], stop: Sequence[str], tokenizer: Any,
                   logprobs: Sequence[float] | None = None, repetition_guard: int = 0) -> Completion:
    """The :class:`Completion` of one generated row (see :func:`completion_end`); ``logprobs`` (one per
    generated token) are cut with the tokens. With ``repetition_guard`` (≥ 2) a row that loops before
    it ends is cut after the looping passage's first copy (:func:`repetition_cut`), not ended."""
    length, ended = completion_end(tokens, end_ids, stop, tokenizer)
    loop = repetition_cut(list(tokens[:length]), repetition_guard) if repetition_guard else None
    if loop is not None:
        length, ended = loop, False
    kept = [int(t) for t in tokens[:length]]
    content = kept[:-1] if kept and kept[-1] in end_ids else kept
    return Completion(tokens=kept, content=content, text=tokenizer.decode(content, skip_special_tokens=True), ended=ended,
                      logprobs=None if logprobs is None else [float(v) for v in logprobs[:length]],
                      repeated=loop is not None)


# ----------------------------------------------------------------------------- sampling
@contextlib.contextmanager
def private_rng(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Draw from a fresh stream seeded with ``seed`` inside the block; the global RNG state is restored after."""
    devices = [device.index or 0] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _eval_mode_generate(model: Any, **kwargs: Any) -> torch.Tensor:
    was_training = model.training
    model.eval()
    try:
        return generate_sharing_prompts(model, **kwargs)
    finally:
        model.train(was_training)


def generate_sharing_prompts(model: Any, **kwargs: Any) -> torch.Tensor:
    """``model.generate(**kwargs)`` with every repeated prompt row prefilled once.

    Group sampling (GRPO, RLOO: k completions per prompt) repeats each left-padded prompt row k times;
    generate would run the prompt through the model k times. Here the U distinct rows' first P − 1
    tokens are run once into a ``DynamicCache`` (positions from the attention mask, as generate
    computes them), the cache is copied to the N rows that share them (``batch_select_indices``), and
    generate continues from it with the last prompt token. The distribution sampled from is the same;
    the prompt's forward costs U/N of what it did (the saving measured in ``benchmarks/prefix_sharing.py``).

    Falls back to a plain ``generate`` when no row repeats, the prompt is one token, or the model does
    not take a dynamic cache (recurrent or static-cache models).

    Args:
        model: an unwrapped HF causal LM, PEFT model or :class:`~alignkit.logprobs.PolicyModule`, in eval mode.
        kwargs: ``generate`` arguments; ``input_ids`` (N, P) and ``attention_mask`` (N, P) are required
            for sharing.

    Returns:
        (N, P + new) token ids, as ``generate``.
    """
    from .logprobs import unwrap_lm

    lm = unwrap_lm(model)  # the causal LM inside a PolicyModule (its forward takes no cache)
    ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
    cache_name = _cache_argument()
    if ids is None or mask is None or ids.shape[1] < 2 or cache_name in kwargs or not _takes_dynamic_cache(lm):
        return model.generate(**kwargs)
    rows = torch.cat([ids, mask.to(ids.dtype)], dim=1)  # (N, 2P): a prompt is its ids and its padding
    distinct, index = torch.unique(rows, dim=0, return_inverse=True)  # (U, 2P), (N,)
    if distinct.shape[0] == ids.shape[0]:
        return model.generate(**kwargs)
    width = ids.shape[1]
    prefix_ids, prefix_mask = distinct[:, : width - 1], distinct[:, width: 2 * width - 1]  # (U, P-1) each
    positions = (prefix_mask.cumsum(-1) - 1).masked_fill(prefix_mask == 0, 0)  # (U, P-1), as generate's
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=_lm_config(lm))
    except TypeError:  # older transformers: no per-layer configuration
        cache = DynamicCache()
    with torch.no_grad():
        lm(input_ids=prefix_ids, attention_mask=prefix_mask, position_ids=positions, use_cache=True,
           **{cache_name: cache})
    cache.batch_select_indices(index)  # (N, heads, P-1, d) per layer: each row's prompt prefix
    return model.generate(**kwargs, **{cache_name: cache})


def _cache_argument() -> str:
    """The keyword ``generate`` and the models take a KV cache by (``cache`` from transformers 5.2x)."""
    try:
        from transformers.generation.utils import ALL_CACHE_NAMES
    except ImportError:
        return "past_key_values"
    return ALL_CACHE_NAMES[0]


def _lm_config(model: Any) -> Any:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.config


def _takes_dynamic_cache(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    supports = getattr(base, "_supports_default_dynamic_cache", None)
    config = getattr(base, "generation_config", None)
    return bool(supports is not None and supports()) and getattr(config, "cache_implementation", None) is None


class SampledLogprobs:
    """A logits processor, last in the chain, that records log π(y_t) of every sampled token.

    Hugging Face samples ``y_t ~ softmax(scores_t)`` where ``scores_t`` are the logits after every
    processor (temperature, top-k, top-p, ...). Called with ``scores_t`` it keeps their log-softmax
    (N, V); at the next call ``input_ids[:, -1]`` is the token sampled from them, whose log-prob it
    gathers. :meth:`finish` gathers the last one. Memory: one (N, V) float32 tensor, not one per step.
    """

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None  # (N, V) log-softmax of the last processed scores
        self.taken: list[torch.Tensor] = []  # per step (N,)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.previous is not None:
            self.taken.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))  # (N,)
        self.previous = torch.log_softmax(scores.float(), dim=-1)  # (N, V)
        return scores

    def finish(self, generated: torch.Tensor) -> torch.Tensor:
        """(N, new) log-probs of ``generated`` (N, new), the tokens after the prompt."""
        if self.previous is not None and generated.shape[1] > len(self.taken):
            self.taken.append(self.previous.gather(1, generated[:, -1:]).squeeze(1))
        self.previous = None
        if not self.taken:
            return torch.zeros(generated.shape[0], 0)
        return torch.stack(self.taken, dim=1)[:, : generated.shape[1]]  # (N, new)


class InverseCDFSampler:
    """A logits processor, last in the chain, that draws each row's next token from ``softmax(scores)``.

    Inverse transform sampling: one uniform u ~ U[0, 1) per row from the global generator, the token is
    the first whose cumulative probability exceeds u · Σp (sums in float64, in two levels: blocks of
    :attr:`BLOCK` tokens, then the tokens of the block u falls in — a full-vocabulary cumulative sum
    is sequential and slow on CPU); a token of probability 0 is never drawn. It returns scores that are
    0 at the drawn token and −inf elsewhere, so ``generate``'s greedy selection takes it. The
    distribution is exactly ``softmax(scores)``, as ``generate``'s own sampling; the draws differ from
    it (another use of the random stream). Why: ``generate`` samples with ``torch.multinomial`` without
    replacement, which on CPU draws one exponential variate per vocabulary entry (49,152 per row and
    token for SmolLM2: 15% of a GRPO rollout's time); this draws one per row.
    """

    BLOCK = 256

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        n, vocab, b = scores.shape[0], scores.shape[-1], self.BLOCK
        probs = torch.softmax(scores.float(), dim=-1)  # (N, V)
        blocks = torch.nn.functional.pad(probs, (0, (-vocab) % b)).view(n, -1, b)  # (N, K, b)
        block_cdf = blocks.sum(dim=-1, dtype=torch.float64).cumsum(dim=-1)  # (N, K)
        u = torch.rand(n, 1, dtype=torch.float64, device=scores.device) * block_cdf[:, -1:]  # (N, 1)
        k = torch.searchsorted(block_cdf, u, right=True).clamp_(max=blocks.shape[1] - 1)  # (N, 1) block
        before = torch.where(k > 0, block_cdf.gather(1, (k - 1).clamp(min=0)), 0.0)  # (N, 1) mass before it
        inside = blocks.gather(1, k[:, :, None].expand(n, 1, b))[:, 0]  # (N, b) the block's probabilities
        j = torch.searchsorted(before + inside.double().cumsum(dim=-1), u, right=True)  # (N, 1)
        # rounding may put u past the block's last possible token: never step onto a zero-probability one
        last = torch.where(inside > 0, torch.arange(b, device=scores.device), -1).amax(dim=-1, keepdim=True)  # (N, 1)
        token = k * b + torch.minimum(j, last)  # (N, 1)
        return torch.full_like(scores, -math.inf).scatter_(1, token, 0.0)  # (N, V)


def _sampling_processors(settings: SamplingSettings, record: bool) -> tuple[list[Any], SampledLogprobs | None]:
    """The sampling warpers in Hugging Face's own order (temperature, top-k, top-p), the recorder (when
    ``record``), then the draw (:class:`InverseCDFSampler`; none for greedy decoding).

    Passed as ``logits_processor`` they run after the built-in processors (repetition penalty, n-gram
    blocking, ...) exactly where ``generate`` would put its warpers, whose own copies are switched off
    (:func:`_drawn_by_processors`): the distribution drawn from is that of a plain ``generate``, and
    recording does not move the draws.
    """
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    processors: list[Any] = []
    if not settings.greedy:
        if settings.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(float(settings.temperature)))
        if settings.top_k > 0:
            processors.append(TopKLogitsWarper(top_k=int(settings.top_k), min_tokens_to_keep=1))
        if settings.top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p=float(settings.top_p), min_tokens_to_keep=1))
    recorder = SampledLogprobs() if record else None
    processors += [recorder] if recorder is not None else []
    processors += [InverseCDFSampler()] if not settings.greedy else []
    return processors, recorder


def _drawn_by_processors(config: Any) -> Any:
    """``config`` without its warpers (our processors apply them) and with greedy selection: a sampled
    draw is made by :class:`InverseCDFSampler`. Greedy ``generate`` applies no warper, so they are left
    unset (a value there would only draw transformers' "not valid and may be ignored" warning)."""
    config.temperature, config.top_k, config.top_p = None, None, None
    config.do_sample = False
    return config


@torch.no_grad()
def sample(model: Any, prompts: Sequence[Sequence[int]], settings: SamplingSettings, *, end_ids: Collection[int],
           pad_id: int, tokenizer: Any, device: torch.device | None = None,
           generate: Callable[..., torch.Tensor] | None = None, logprobs: bool = False,
           streamer: Any = None) -> list[Completion]:
    """Generate one completion per prompt (left-padded batch, KV cache) and cut each where it ended.

    Draws from the global RNG (wrap in :func:`private_rng` or the rollout's own stream).

    Args:
        model: a HF causal LM, possibly wrapped (DDP / FSDP / PEFT / ``PolicyModule``).
        prompts: token ids of each prompt (N lists, any lengths).
        settings: what to decode (nothing is taken from the model's ``generation_config``).
        end_ids: ids that end a turn (:func:`end_token_ids`).
        pad_id: padding id (left padding of prompts, filler after a row ended).
        tokenizer: decodes completions (and finds stop strings).
        device: where the batch goes (default: the model's first parameter's device).
        generate: ``generate(**kwargs) -> (N, P + new)`` to call instead of ``model.generate`` in eval
            mode, e.g. :func:`alignkit.distributed.generate` for a sharded policy.
        logprobs: record each sampled token's log-prob under the processed distribution it was drawn
            from (:class:`SampledLogprobs`); the draws are the same as without. Draws are made by
            :class:`InverseCDFSampler` (the same distribution as ``generate``'s own sampling).
        streamer: a ``transformers`` streamer (``put(ids)``, ``end()``) told of every new token (one
            prompt only), e.g. ``alignkit chat``'s token bar.

    Returns:
        N :class:`Completion` in prompt order.
    """
    if not prompts:
        return []
    device = device if device is not None else next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts], device=device)  # (N, P)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)  # (N, P)
    config = generation_config(settings, end_ids, pad_id, tokenizer)
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "generation_config": config}
    from transformers import LogitsProcessorList

    # The warpers, the recorder and the draw run as our own processors; generate then selects greedily.
    processors, recorder = _sampling_processors(settings, record=logprobs)
    if processors:
        kwargs.update(generation_config=_drawn_by_processors(config),
                      logits_processor=LogitsProcessorList(processors))
    if settings.stop:
        kwargs["tokenizer"] = tokenizer
    if streamer is not None:
        kwargs["streamer"] = streamer
    if settings.repetition_guard:
        from transformers import StoppingCriteriaList

        kwargs["stopping_criteria"] = StoppingCriteriaList([repetition_stop(width, settings.repetition_guard)])
    with own_generation_defaults(model):
        out = generate(**kwargs) if generate is not None else _eval_mode_generate(model, **kwargs)  # (N, P + new)
    generated = out[:, width:]  # (N, new)
    taken = recorder.finish(generated).tolist() if recorder is not None else [None] * len(prompts)  # (N, new)
    return [cut_completion(row, end_ids, settings.stop, tokenizer, lp, settings.repetition_guard)
            for row, lp in zip(generated.tolist(), taken)]
