"""Built-in data formats: chat, prompt_completion, scored, pairwise, ranked, prompts, unpaired, hh_rlhf.

Each declares the fields it reads (``keys``) and how to recognise its rows (``required`` or
``detect``), so ``data.format: auto`` can infer it (``alignkit.data.infer_format``).
"""

from __future__ import annotations

from alignkit.api import DataFormatSpec, hookimpl

from . import parsers


@hookimpl
def register_data_formats(register):
    register(DataFormatSpec(name="chat", parse=parsers.parse_chat, produces="tokens",
                            keys=("messages", "conversations"), detect=parsers.detect_chat))
    register(DataFormatSpec(name="prompt_completion", parse=parsers.parse_prompt_completion, produces="tokens",
                            required=("prompt", "completion")))
    register(DataFormatSpec(name="scored", parse=parsers.parse_scored, produces="tokens",
                            required=("prompt", "completion", "scores")))
    register(DataFormatSpec(name="pairwise", parse=parsers.parse_pairwise, produces="pairs",
                            required=("chosen", "rejected"), keys=("prompt", "margin", "label"),
                            detect=parsers.detect_pairwise))
    register(DataFormatSpec(name="ranked", parse=parsers.parse_ranked, produces="ranked",
                            required=("completions",), keys=("prompt", "scores"), detect=parsers.detect_ranked))
    register(DataFormatSpec(name="prompts", parse=parsers.parse_prompts, produces="prompts", required=("prompt",)))
    register(DataFormatSpec(name="unpaired", parse=parsers.parse_unpaired, produces="unpaired",
                            required=("prompt", "completion", "label"), detect=parsers.detect_unpaired))
    register(DataFormatSpec(name="hh_rlhf", parse=parsers.parse_hh_rlhf, produces="pairs",
                            required=("chosen", "rejected"), detect=parsers.detect_hh_rlhf))
