"""``alignkit cai``: run a CAI data stage alone, or measure harmlessness with the feedback model.

    alignkit cai generate --stage sl|rl [--out FILE] [hydra overrides ...]
    alignkit cai compare --data SL_FILE [--judge MODEL] [--out FILE] [overrides ...]
    alignkit cai compare --model A --baseline B [--judge MODEL] [--prompts N] [--out FILE] [overrides ...]
    alignkit cai pipeline --run-dir DIR [overrides ...]      SL run, then RL run on its model

Overrides are those of ``alignkit train`` (``model=smollm2 data=hh_harmless rollout.rounds=2 ...``):
the run config is composed with ``rollout=cai rollout.stage=<stage>`` (and the stage's method: ``sft`` /
``dpo``) first, so ``rollout.*`` are the ``rollout=cai`` options and ``experiment=cai_sl`` /
``experiment=cai_rl`` work here too.
``alignkit train experiment=cai`` runs the same two stages as ``cai pipeline`` (``alignkit.stages``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from alignkit.api import ConfigError

from .constitution import load_constitution

#: The method each stage trains with by default (experiment=cai_sl / cai_rl say the same).
STAGE_METHODS = {"sl": "sft", "rl": "dpo"}
from .store import read_jsonl


def _compose(stage: str, overrides: list[str]) -> Any:
    from alignkit.api import compose, validate

    method = STAGE_METHODS[stage]
    cfg = compose([f"method={method}", *(["loss=dpo"] if method == "dpo" else []), "rollout=cai",
                   f"rollout.stage={stage}", *overrides])
    if cfg.get("stages"):
        raise ConfigError(f"this command runs one stage; the experiment given is a multi-stage pipeline "
                          f"(pass experiment=cai_{stage} instead of experiment=cai)")
    validate(cfg)
    return cfg


def _registry() -> Any:
    from alignkit.api import get_registry

    return get_registry()


def cmd_generate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignkit cai generate", description="Run one CAI data stage alone.")
    parser.add_argument("--stage", choices=("sl", "rl"), required=True)
    parser.add_argument("--out", help="the generated JSONL (default: rollout.output or ./cai_<stage>.jsonl)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("overrides", nargs="*", help="hydra overrides, as for alignkit train")
    args = parser.parse_args(argv)
    cfg = _compose(args.stage, args.overrides)
    from alignkit.api import load_model

    from .runner import run_stage

    out = Path(args.out or cfg.rollout.output or f"cai_{args.stage}.jsonl")
    model, tokenizer = load_model(cfg.model)
    model.eval()
    rows, train_path = run_stage(cfg, cfg.rollout, _registry(), model, tokenizer, out,
                                 show_progress=not args.no_progress)
    print(json.dumps({"stage": args.stage, "rows": len(rows), "output": str(out), "training_rows": str(train_path),
                      "training_examples": sum(1 for _ in open(train_path))}))
    return 0


def _comparison_settings(cfg: Any) -> dict[str, Any]:
    rollout = cfg.rollout
    return {"seed": int(cfg.trainer.seed if rollout.seed is None else rollout.seed),
            "principles_per_pair": int(rollout.principles_per_pair), "swap": bool(rollout.swap)}


def _feedback(name: str, cfg: Any) -> Any:
    from alignkit.api import load_for_inference

    from .feedback import FeedbackModel

    model, tokenizer = load_for_inference(name)
    model.requires_grad_(False)
    return FeedbackModel(model, tokenizer, template=cfg.rollout.feedback_template, answer_prefix=cfg.rollout.answer_prefix,
                         batch_size=cfg.rollout.batch_size)


def _answers(name: str, prompts: list[list[dict]], cfg: Any, temperature: float, seed: int) -> list[str]:
    from alignkit.api import load_for_inference

    from .generation import ChatGenerator
    from .stages import call_seed

    model, tokenizer = load_for_inference(name)
    generator = ChatGenerator(model, tokenizer, max_new_tokens=cfg.rollout.max_new_tokens, temperature=temperature,
                              top_p=cfg.rollout.top_p, max_prompt_tokens=cfg.rollout.max_prompt_tokens)
    size, out = int(cfg.rollout.batch_size), []
    for start in range(0, len(prompts), size):
        out += generator(prompts[start:start + size], call_seed(seed, start, 0))
    return out


def cmd_compare(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignkit cai compare",
                                     description="Feedback-model preference: revised vs initial answers, or model vs baseline.")
    parser.add_argument("--data", help="an SL file from 'cai generate --stage sl': revised vs initial answers")
    parser.add_argument("--model", help="model A (run folder, HF folder, smollm2, tiny) answering held-out prompts")
    parser.add_argument("--baseline", default="smollm2", help="model B for --model (default smollm2)")
    parser.add_argument("--judge", default="smollm2", help="the feedback model (default smollm2)")
    parser.add_argument("--prompts", type=int, default=32, help="held-out prompts for --model (default 32)")
    parser.add_argument("--temperature", type=float, default=0.0, help="answer sampling for --model (0 = greedy)")
    parser.add_argument("--out", help="write the summary and every judgement as JSON here")
    parser.add_argument("overrides", nargs="*", help="hydra overrides, as for alignkit train")
    args = parser.parse_args(argv)
    if bool(args.data) == bool(args.model):
        raise ConfigError("alignkit cai compare: pass either --data SL_FILE or --model A [--baseline B]")
    cfg = _compose("sl", args.overrides)
    constitution = load_constitution(cfg.rollout.constitution)
    settings = _comparison_settings(cfg)
    from .compare import compare, describe

    if args.data:
        rows = [r for r in read_jsonl(args.data) if "initial" in r and "completion" in r]
        if not rows:
            raise ConfigError(f"--data {args.data}: no SL rows (with 'initial' and 'completion')")
        prompts = [r["prompt"] for r in rows]
        x, y, names = [r["completion"] for r in rows], [r["initial"] for r in rows], ("revised", "initial")
    else:
        from .stages import load_prompts

        records = load_prompts(cfg.data, _registry(), settings["seed"], split="eval", limit=args.prompts,
                               single_turn_only=bool(cfg.rollout.single_turn_only))
        prompts = [r["prompt"] for r in records]
        x = _answers(args.model, prompts, cfg, args.temperature, settings["seed"])
        y = _answers(args.baseline, prompts, cfg, args.temperature, settings["seed"])
        names = ("model", "baseline")
    summary, details = compare(_feedback(args.judge, cfg), constitution, prompts, x, y, **settings)
    summary.update(x=names[0], y=names[1], judge=args.judge, constitution=constitution.name, **settings)
    print(describe(summary, *names))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "details": details}, indent=1))
    return 0


def cmd_pipeline(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="alignkit cai pipeline",
                                     description="The whole CAI pipeline: experiment=cai_sl (SL), then experiment=cai_rl "
                                                 "on the SL model (RL); overrides apply to both stages.")
    parser.add_argument("--run-dir", required=True, help="folder for the two runs: <run-dir>/sl and <run-dir>/rl")
    parser.add_argument("--sl-experiment", default="cai_sl")
    parser.add_argument("--rl-experiment", default="cai_rl")
    parser.add_argument("overrides", nargs="*", help="hydra overrides for both stages")
    args = parser.parse_args(argv)
    from alignkit.api import Stage, format_metrics, run_stages, train

    def run(cfg: Any, folder: Path) -> Any:
        result = train(cfg, folder)
        print(f"cai pipeline: {folder.name} finished {result.steps} steps in {folder}; held-out after: "
              f"{format_metrics(result.eval_after)}", flush=True)
        return result

    stages = [Stage("sl", (f"experiment={args.sl_experiment}",)),
              Stage("rl", (f"experiment={args.rl_experiment}",), model_from="sl")]
    run_stages(args.overrides, stages, Path(args.run_dir), resume=False, run=run)
    return 0


SUBCOMMANDS = {"generate": cmd_generate, "compare": cmd_compare, "pipeline": cmd_pipeline}


def main(argv: list[str]) -> int:
    """Constitutional AI: 'generate' runs a data stage alone, 'compare' measures harmlessness, 'pipeline' runs both stages."""
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars only, as in alignkit train
    return SUBCOMMANDS[argv[0]](argv[1:])
