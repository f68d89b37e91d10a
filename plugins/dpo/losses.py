"""Pure loss math for direct preference optimisation (DPO and its relatives).

Every function takes sequence-level log-probabilities of shape (B,) — one number per completion,
usually the sum of per-token log-probs from `alignkit.kernels.token_logprobs` over the response —
and returns per-example losses (B,). The caller reduces (mean, masked mean, weighted sum), so the
losses compose with masks and importance weights.

Notation shared by the docstrings below:

    h = (log π(y_c|x) − log π_ref(y_c|x)) − (log π(y_r|x) − log π_ref(y_r|x))

the difference of the policy-to-reference log-ratios of the chosen (y_c) and rejected (y_r) answers.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["dpo", "dpo_implicit_rewards", "ipo", "robust_dpo"]


def _logratio_margin(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
) -> Tensor:
    # Subtracting within each answer first keeps h exactly 0 when policy == reference, whatever the
    # magnitude of the log-probs (summing the two policy terms first would round differently).
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    return chosen_logratios - rejected_logratios  # (B,)


def dpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    soft_labels: Tensor | None = None,
) -> Tensor:
    r"""DPO sigmoid loss on policy/reference log-ratios; conservative DPO (cDPO) when label_smoothing > 0.

    Paper: "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
    Rafailov, Sharma, Mitchell, Ermon, Manning & Finn, 2023, https://arxiv.org/abs/2305.18290.
    Label smoothing: "A note on DPO with noisy preferences & relationship to IPO" (cDPO),
    Mitchell, 2023, https://ericmitchell.ai/cdpo.pdf.

    Formula, with h the log-ratio margin (module docstring) and ε = label_smoothing::

        loss = −(1 − ε) · log σ(β h) − ε · log σ(−β h)

    ε = 0 is plain DPO; ε > 0 assumes each preference label is flipped with probability ε.
    When the policy equals the reference, h = 0 and the loss is exactly ln 2 for every β.

    Per-pair soft labels p = P(chosen better) (e.g. AI feedback read from token probabilities, as in
    Constitutional AI / RLAIF) replace the fixed 1 − ε by each pair's own target, the cDPO loss with
    a per-pair flip rate 1 − p; combined with ε the target is q = p(1 − ε) + (1 − p)ε::

        loss = −q · log σ(β h) − (1 − q) · log σ(−β h)

    p = 1 gives the formula above exactly.

    Args:
        policy_chosen_logps: (B,) log π(y_c|x), summed over the response tokens.
        policy_rejected_logps: (B,) log π(y_r|x).
        ref_chosen_logps: (B,) log π_ref(y_c|x), no gradient needed.
        ref_rejected_logps: (B,) log π_ref(y_r|x).
        beta: inverse temperature β > 0 of the implicit KL penalty.
        label_smoothing: ε in [0, 0.5], probability that a label is flipped.
        soft_labels: optional (B,) probability p in [0, 1] that the chosen answer is the better one.

    Returns:
        (B,) per-example losses.

    Raises:
        ValueError: if label_smoothing is not in [0, 0.5].
    """
    if not 0.0 <= label_smoothing <= 0.5:
        raise ValueError(
            "dpo: label_smoothing (the cDPO label flip rate ε) must be in [0, 0.5]; "
            f"got {label_smoothing}. Above 0.5 the labels would mean the opposite preference."
        )
    h = _logratio_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )  # (B,)
    logits = beta * h  # (B,)
    if soft_labels is not None:
        p = soft_labels.to(logits)  # (B,)
        target = p * (1.0 - label_smoothing) + (1.0 - p) * label_smoothing  # (B,)
        return -target * F.logsigmoid(logits) - (1.0 - target) * F.logsigmoid(-logits)  # (B,)
    # Two weighted terms rather than a soft-label BCE so that ε = 0 reproduces DPO bit for bit.
    return -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(
        -logits
    )  # (B,)


def ipo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    tau: float = 0.1,
) -> Tensor:
    r"""IPO squared loss: regress the log-ratio margin h onto 1/(2τ).

    Paper: "A General Theoretical Paradigm to Understand Learning from Human Preferences"
    (Ψ-PO / IPO), Azar, Rowland, Piot, Guo, Calandriello, Valko & Munos, 2023,
    https://arxiv.org/abs/2310.12036.

    Formula, with h the log-ratio margin (module docstring)::

        loss = (h − 1 / (2τ))²

    Unlike DPO the target margin is finite, so the policy cannot drift arbitrarily far from the
    reference on deterministic preferences.

    Sums or means: the paper writes h with sequence log-probabilities (sums), while several
    implementations (e.g. TRL's `ipo`) pass length-averaged log-probs, which changes the useful
    scale of τ. This function does not decide: it uses whatever the caller passes.

    Args:
        policy_chosen_logps: (B,) log π(y_c|x) (summed or length-averaged, see above).
        policy_rejected_logps: (B,) log π(y_r|x).
        ref_chosen_logps: (B,) log π_ref(y_c|x).
        ref_rejected_logps: (B,) log π_ref(y_r|x).
        tau: regularisation strength τ > 0; the target margin is 1/(2τ).

    Returns:
        (B,) per-example losses.

    Raises:
        ValueError: if tau <= 0.
    """
    if tau <= 0:
        raise ValueError(f"ipo: tau must be > 0 (the target margin is 1/(2*tau)), got tau={tau}")
    h = _logratio_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )  # (B,)
    return (h - 1.0 / (2.0 * tau)) ** 2  # (B,)


def robust_dpo(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.1,
) -> Tensor:
    r"""Robust DPO (rDPO): unbiased DPO loss under preference labels flipped with probability ε.

    Paper: "Provably Robust DPO: Aligning Language Models with Noisy Feedback",
    Chowdhury, Kini & Natarajan, 2024, https://arxiv.org/abs/2403.00409.

    Formula, with h the log-ratio margin (module docstring) and ε = label_smoothing::

        loss = (−(1 − ε) · log σ(β h) + ε · log σ(−β h)) / (1 − 2ε)

    In expectation over the label noise this equals the DPO loss on clean labels (cDPO, by
    contrast, is biased towards the noisy optimum). The loss can be negative for individual
    examples; only its expectation is meaningful. ε = 0 gives DPO exactly.

    Args:
        policy_chosen_logps: (B,) log π(y_c|x), summed over the response tokens.
        policy_rejected_logps: (B,) log π(y_r|x).
        ref_chosen_logps: (B,) log π_ref(y_c|x).
        ref_rejected_logps: (B,) log π_ref(y_r|x).
        beta: inverse temperature β > 0.
        label_smoothing: flip rate ε in [0, 0.5).

    Returns:
        (B,) per-example losses.

    Raises:
        ValueError: if label_smoothing is not in [0, 0.5).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(
            "robust_dpo: label_smoothing (the label flip rate ε) must be in [0, 0.5) because the loss "
            f"divides by 1 - 2ε; got {label_smoothing}. Use a smaller value, e.g. 0.1."
        )
    h = _logratio_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )  # (B,)
    logits = beta * h  # (B,)
    unscaled = -(1.0 - label_smoothing) * F.logsigmoid(logits) + label_smoothing * F.logsigmoid(
        -logits
    )  # (B,)
    return unscaled / (1.0 - 2.0 * label_smoothing)  # (B,)


def dpo_implicit_rewards(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    detach: bool = False,
) -> tuple[Tensor, Tensor]:
    r"""DPO implicit rewards β·(log π − log π_ref) of the chosen and rejected answers.

    Paper: Rafailov et al., 2023, https://arxiv.org/abs/2305.18290 (section 5: the policy defines
    a reward r(x, y) = β log π(y|x)/π_ref(y|x) up to a prompt-only term).

    Formula::

        chosen_rewards   = β · (log π(y_c|x) − log π_ref(y_c|x))
        rejected_rewards = β · (log π(y_r|x) − log π_ref(y_r|x))

    Typical metrics: reward accuracy (chosen > rejected) and margin (chosen − rejected).

    Args:
        policy_chosen_logps: (B,) log π(y_c|x).
        policy_rejected_logps: (B,) log π(y_r|x).
        ref_chosen_logps: (B,) log π_ref(y_c|x).
        ref_rejected_logps: (B,) log π_ref(y_r|x).
        beta: the β used by the loss.
        detach: return tensors cut from the graph, for logging without keeping activations alive.

    Returns:
        (chosen_rewards (B,), rejected_rewards (B,)).
    """
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)  # (B,)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)  # (B,)
    if detach:
        return chosen_rewards.detach(), rejected_rewards.detach()
    return chosen_rewards, rejected_rewards
