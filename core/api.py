"""``alignkit.api``: everything a plugin may import, in one module.

Built-in plugins and third-party ones alike import alignkit through this module (and
:mod:`alignkit.rl`, the shared online-RL math, and :mod:`alignkit.testing`, the conformance kit, in
tests). What is here is the stable surface: its names keep their meaning across minor versions, and a
change is announced. Every other module of ``alignkit`` is internal and may change without notice.

Groups:

- **registering** — :func:`hookimpl` and the specs (``MethodSpec``, ``LossSpec``, ``AdvantageSpec``,
  ``RolloutSpec``, ``EngineSpec``, ``ISCorrectionSpec``, ``ScorerSpec``, ``DataFormatSpec``, ``CommandSpec``);
- **the contracts** — :class:`RunContext`, :class:`LossOutput` / :class:`LossTerm` (the loss and its
  terms, each a mean over its own units), :class:`UpdatePlan`, and the protocols an objective, rollout
  or scorer follows;
- **batches** — :class:`TokenBatch`, :class:`PairBatch`, :class:`RankedBatch`, :class:`UnpairedBatch`,
  :class:`PromptBatch`, :class:`RolloutBatch`;
- **log-probs and losses** — :func:`sequence_logprobs` (no logits are built), :func:`nll`,
  :class:`ReferenceLogprobs`, the preference statistics;
- **data, models, generation, encoding** — what rollouts and commands build on;
- **running** — composing a config, training it, multi-stage runs (for commands);
- **errors** — raise these for one-line user errors.
"""

from __future__ import annotations

from .batches import (
    PairBatch,
    PromptBatch,
    RankedBatch,
    RolloutBatch,
    TokenBatch,
    UnpairedBatch,
    completion_rows,
    padded_rows,
)
from .callables import load_callable
from .chat import EMPTY_COMPLETION, empty_note, shown
from .compose import compose, validate
from .context import RunContext
from .data import (
    COLLATORS,
    ENCODERS,
    DataConfig,
    condition_records,
    encode_records,
    infer_format,
    length_of,
    load_records,
    make_encoder,
    rename_columns,
    settle_format,
    split_records,
)
from .datafiles import read_rows
from .distributed import generate as generate_from_policy
from .distributed import shard
from .encoding import EncodingSettings, prompt_encoding, report, report_start_model, saved_encoding
from .engines import Engine, EngineDemand, engine_weights, policy_logprobs, request_seed, sampler_logprob_rows, sync_gap
from .errors import AlignkitError, CheckpointError, ConfigError, DataError, ModelError, TrainingError
from .generation import (
    Completion,
    SamplingSettings,
    cut_completion,
    distorting_options,
    end_token_ids,
    private_rng,
    sample,
)
from .hookspecs import hookimpl
from .interfaces import (
    Evaluates,
    FillsBatches,
    HasExtraParameters,
    ListsExamples,
    LossOutput,
    LossTerm,
    Max,
    Mean,
    Min,
    Objective,
    PlansUpdates,
    ReportsStats,
    Rollout,
    Samples,
    SavesExtras,
    Scorer,
    Stateful,
    Sum,
    UpdatePlan,
    mean_summary,
)
from .judge import JudgeScorer, JudgeScorerConfig, soft_score
from .logprobs import (
    hidden_states,
    next_token_logprobs,
    sequence_logprobs,
    token_stats,
    token_stats_with_hidden,
    unwrap_lm,
)
from .loop import train
from .losses import nll
from .metrics import format_metrics, read_metrics
from .models import BUNDLED_TOKENIZER, ModelConfig, find_model_folder, load_for_inference, load_model
from .plotting import pyplot
from .plugin_manager import get_registry
from .records import Messages, as_messages, can_convert, is_conversation, last_user_text, split_shared_prefix
from .reference import ReferenceLogprobs, tokenizer_digest, weights_digest
from .reward_models import (
    RewardHead,
    RewardModelScorer,
    at_last_token,
    last_token_hidden,
    resolve_reward_folder,
    score_sequences,
)
from .scoring import Checker, as_rewards, time_limit
from .specs import (
    RECORD_KINDS,
    AdvantageSpec,
    CommandSpec,
    DataFormatSpec,
    EngineSpec,
    ISCorrectionSpec,
    LossSpec,
    MethodSpec,
    RolloutSpec,
    ScorerSpec,
)
from .stages import Stage, run_stages
from .stats import bootstrap_interval, mean_interval, preference_correct, preference_summary, tie_scale, wilson_interval
from .step_metrics import row_means, token_means
from .tokenize import IGNORE_INDEX, Encoder, pad, text_ids, truncate_left

__all__ = [
    # registering
    "hookimpl", "MethodSpec", "LossSpec", "AdvantageSpec", "RolloutSpec", "EngineSpec", "ISCorrectionSpec", "ScorerSpec",
    "DataFormatSpec", "CommandSpec",
    # the contracts
    "RunContext", "LossOutput", "LossTerm", "Mean", "Max", "Min", "Sum", "row_means", "token_means", "UpdatePlan", "Objective", "Rollout", "Scorer", "Samples", "ListsExamples",
    "Stateful", "HasExtraParameters", "Evaluates", "PlansUpdates", "SavesExtras", "FillsBatches", "ReportsStats",
    "mean_summary",
    # batches
    "TokenBatch", "PairBatch", "RankedBatch", "UnpairedBatch", "PromptBatch", "RolloutBatch", "completion_rows",
    "padded_rows",
    # log-probs, losses, statistics
    "sequence_logprobs", "token_stats", "token_stats_with_hidden", "hidden_states", "next_token_logprobs", "unwrap_lm",
    "nll", "ReferenceLogprobs", "weights_digest", "tokenizer_digest", "preference_correct", "preference_summary", "tie_scale", "mean_interval",
    "wilson_interval", "bootstrap_interval",
    # data, records, tokens
    "DataConfig", "load_records", "split_records", "condition_records", "encode_records", "make_encoder", "COLLATORS",
    "ENCODERS", "infer_format", "settle_format", "rename_columns", "split_shared_prefix", "is_conversation",
    "can_convert", "RECORD_KINDS", "BUNDLED_TOKENIZER",
    "length_of", "read_rows", "Messages", "as_messages", "last_user_text", "IGNORE_INDEX", "Encoder", "pad",
    "text_ids", "truncate_left",
    # reward models and judges
    "RewardHead", "RewardModelScorer", "resolve_reward_folder", "at_last_token", "last_token_hidden", "score_sequences",
    "JudgeScorer", "JudgeScorerConfig", "soft_score", "as_rewards", "Checker", "time_limit", "load_callable",
    # models, generation, encoding
    "ModelConfig", "load_model", "load_for_inference", "find_model_folder", "SamplingSettings", "sample",
    "end_token_ids", "private_rng", "distorting_options", "generate_from_policy", "Completion", "cut_completion", "Engine", "EngineDemand",
    "engine_weights", "policy_logprobs", "request_seed", "sampler_logprob_rows", "sync_gap", "shard", "EncodingSettings",
    "prompt_encoding", "saved_encoding", "report", "report_start_model", "EMPTY_COMPLETION", "shown", "empty_note",
    # running
    "compose", "validate", "train", "Stage", "run_stages", "get_registry", "format_metrics", "read_metrics", "pyplot",
    # errors
    "AlignkitError", "ConfigError", "DataError", "ModelError", "CheckpointError", "TrainingError",
]
