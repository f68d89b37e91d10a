"""Log-prob passes over group-sampled rows: each prompt run once (shared-prefix packing) vs row by row.

SmolLM2-135M, fp32, CPU. The rows are a rollout's: the bundled arithmetic task's first ``--prompts``
prompts (chat template applied), each repeated ``--k`` times, followed by a completion of a length
drawn uniformly from ``--min-new``..``--max-new`` tokens (random token ids: the compute depends on the
lengths only), right-padded. Three passes, each timed for both arms: the reference model's scoring
(no grad), the policy's forward + backward with every decoder layer checkpointed (RLOO's setting in
``benchmarks/vs_trl.py``), and without checkpointing (GRPO's). The row-by-row arm uses length grouping
(``trainer.length_grouping=0.8``, the default). Arms alternate, ``--repeats`` times each after one
warm-up; the table gives median seconds and their ratio, and the largest per-token log-prob
difference between the arms.

    python benchmarks/shared_prefix_scoring.py            # 4 prompts x k=4, 8..32 new tokens (~2 min)
    python benchmarks/shared_prefix_scoring.py --prompts 8 --max-new 48
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--min-new", type=int, default=8)
    parser.add_argument("--max-new", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import alignkit
    from alignkit import logprobs
    from alignkit.logprobs import PolicyModule
    from alignkit.memory import enable_activation_checkpointing
    from alignkit.models import ensure_smollm2

    torch.manual_seed(0)
    folder = ensure_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    path = Path(alignkit.__file__).parent / "assets" / "data" / "arith" / "train.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        examples = [json.loads(line) for line in handle][: args.prompts]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": e["prompt"]}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False) for e in examples]
    rows, prompt_lengths = [], []
    for prompt in prompts:
        for _ in range(args.k):
            new = int(torch.randint(args.min_new, args.max_new + 1, ()))
            rows.append(list(prompt) + torch.randint(0, len(tokenizer), (new,)).tolist())
            prompt_lengths.append(len(prompt))
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])  # (N, T)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])  # (N, T)
    labels = ids.masked_fill(mask == 0, -100)  # (N, T)
    for i, n in enumerate(prompt_lengths):
        labels[i, :n] = -100
    groups = torch.arange(len(rows)) // args.k  # (N,)
    logprobs.set_length_grouping(0.8)

    def model(checkpointed: bool) -> PolicyModule:
        lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        if checkpointed:
            enable_activation_checkpointing(lm, 1)
        return PolicyModule(lm)

    reference = model(False).eval()
    policies = {"checkpointed": model(True).train(), "not checkpointed": model(False).train()}

    def score(packed: bool) -> torch.Tensor:
        with torch.no_grad():
            return reference(ids, mask, labels, 1.0, prefix_groups=groups if packed else None).logprobs

    def train(policy: PolicyModule, packed: bool) -> None:
        stats = policy(ids, mask, labels, 1.0, prefix_groups=groups if packed else None)
        stats.sum.sum().backward()
        policy.zero_grad(set_to_none=True)

    passes = {"reference scoring (no grad)": score}
    for name, policy in policies.items():
        passes[f"forward + backward, {name}"] = lambda packed, policy=policy: train(policy, packed)
    difference = float((score(True) - score(False)).abs().max())
    print(f"{len(prompts)} prompts x k={args.k}: {len(rows)} rows of {min(map(len, rows))}..{width} tokens, "
          f"prompts {min(prompt_lengths)}..{max(prompt_lengths)} tokens; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"largest per-token log-prob difference, packed vs row by row: {difference:.2e}")
    print("| pass | row by row (s) | prompt once (s) | speed-up |\n|---|---|---|---|")
    for name, run in passes.items():
        times: dict[bool, list[float]] = {False: [], True: []}
        for packed in (False, True):  # warm-up
            run(packed)
        for _ in range(args.repeats):
            for packed in (False, True):
                start = time.perf_counter()
                run(packed)
                times[packed].append(time.perf_counter() - start)
        plain, packed = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {name} | {plain:.2f} | {packed:.2f} | {plain / packed:.2f}x |")


if __name__ == "__main__":
    main()
