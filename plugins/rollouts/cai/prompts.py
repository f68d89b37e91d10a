"""How CAI's prompts are assembled, exactly (``docs/cai.md`` shows the same templates).

Supervised stage, per prompt x (a list of chat messages) and round r with principle k_r::

    answer     <- model(x)
    critique_r <- model(x + [assistant: y_{r-1}, user: critique_k])
    y_r        <- model(x + [assistant: y_{r-1}, user: critique_k, assistant: critique_r, user: revision_k])

with y_0 the first answer. Each message list goes through the model's chat template with the
generation prompt added. RL stage: one user message built from :data:`FEEDBACK_TEMPLATE`, the chat
template, then ``answer_prefix``; the feedback model's next-token probabilities of ``A`` / ``B`` are read.

Principles are drawn by ``random.Random`` seeded with a string of the seed, the stage and the
prompt's index, so a prompt gets the same principles whatever the batch size or a resume.
"""

from __future__ import annotations

import random

from .constitution import Constitution, Principle

Messages = list[dict[str, str]]

FEEDBACK_TEMPLATE = ("Here is a conversation between a person and an AI assistant:\n\n{conversation}\n\n"
                     "{principle}\n\n(A) {response_a}\n\n(B) {response_b}\n\nAnswer with (A) or (B).")
ANSWER_PREFIX = "The better answer is ("
SPEAKERS = {"user": "Person", "assistant": "Assistant", "system": "System"}


def critique_messages(prompt: Messages, answer: str, principle: Principle) -> Messages:
    """The conversation that asks the model to critique its ``answer`` under ``principle``."""
    return [*prompt, {"role": "assistant", "content": answer}, {"role": "user", "content": principle.critique}]


def revision_messages(prompt: Messages, answer: str, principle: Principle, critique: str) -> Messages:
    """The conversation that asks the model to revise ``answer`` after its ``critique``."""
    return [*critique_messages(prompt, answer, principle), {"role": "assistant", "content": critique},
            {"role": "user", "content": principle.revision}]


def conversation_text(prompt: Messages) -> str:
    """``Person: ...`` / ``Assistant: ...`` lines, one blank line apart (the conversation so far)."""
    return "\n\n".join(f"{SPEAKERS.get(m['role'], m['role'])}: {m['content']}" for m in prompt)


def feedback_text(prompt: Messages, principle: str, response_a: str, response_b: str,
                  template: str = FEEDBACK_TEMPLATE) -> str:
    """The feedback model's user message comparing ``response_a`` (A) and ``response_b`` (B)."""
    return (template.replace("{conversation}", conversation_text(prompt)).replace("{principle}", principle)
            .replace("{response_a}", response_a).replace("{response_b}", response_b))


def sample_sl_principles(constitution: Constitution, seed: int, index: int, rounds: int) -> list[int]:
    """Principle index for each critique -> revision round of prompt ``index`` (drawn independently)."""
    rng = random.Random(f"cai-sl:{seed}:{index}")
    return [rng.randrange(len(constitution.principles)) for _ in range(rounds)]


def sample_rl_principles(constitution: Constitution, seed: int, index: int, count: int) -> list[int]:
    """``count`` preference-principle indices for pair ``index`` (distinct while there are enough)."""
    n = len(constitution.preference_principles)
    rng = random.Random(f"cai-rl:{seed}:{index}")
    if count <= n:
        return rng.sample(range(n), count)
    return [rng.randrange(n) for _ in range(count)]
