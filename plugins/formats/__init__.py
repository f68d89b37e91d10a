"""Built-in data formats: chat, prompt_completion, scored, pairwise, ranked, prompts, hh_rlhf."""

from __future__ import annotations

from alignkit.api import DataFormatSpec, hookimpl

from . import parsers


@hookimpl
def register_data_formats(register):
    register(DataFormatSpec(name="chat", parse=parsers.parse_chat, produces="tokens", required=("messages",)))
    register(DataFormatSpec(name="prompt_completion", parse=parsers.parse_prompt_completion, produces="tokens",
                            required=("prompt", "completion")))
    register(DataFormatSpec(name="scored", parse=parsers.parse_scored, produces="tokens",
                            required=("prompt", "completion", "scores")))
    register(DataFormatSpec(name="pairwise", parse=parsers.parse_pairwise, produces="pairs",
                            required=("prompt", "chosen", "rejected")))
    register(DataFormatSpec(name="ranked", parse=parsers.parse_ranked, produces="ranked",
                            required=("prompt", "completions")))
    register(DataFormatSpec(name="prompts", parse=parsers.parse_prompts, produces="prompts", required=("prompt",)))
    register(DataFormatSpec(name="hh_rlhf", parse=parsers.parse_hh_rlhf, produces="pairs",
                            required=("chosen", "rejected")))
