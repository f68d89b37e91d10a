"""Group sampling with each repeated prompt prefilled once, against plain ``generate``, on SmolLM2.

The GRPO workload of ``benchmarks/vs_trl.py``: the bundled arithmetic task's first ``--prompts``
prompts (chat template applied), each repeated ``--k`` times, ``--new-tokens`` sampled tokens at
temperature 1 (every row runs to the cap: ``min_new_tokens`` = ``max_new_tokens``, so both arms decode
the same number of tokens), fp32 on CPU. The two arms alternate in one process, ``--repeats`` times each
after one warm-up of each; the table gives the median seconds and their ratio. A greedy run of both on
the same prompts checks that the tokens are the same.

    python benchmarks/prefix_sharing.py                 # 8 prompts x k=4, 48 tokens (~2 min on 2 cores)
    python benchmarks/prefix_sharing.py --k 8 --repeats 3
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
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import alignkit
    from alignkit.generation import generate_sharing_prompts
    from alignkit.models import ensure_smollm2

    folder = ensure_smollm2()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    path = Path(alignkit.__file__).parent / "assets" / "data" / "arith" / "train.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle][: args.prompts]
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False) for r in rows]
    prompts = [p for p in prompts for _ in range(args.k)]  # (P * k) rows, each prompt's k samples together
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (width - len(p)) + list(p) for p in prompts])  # (N, P)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])  # (N, P)
    common = dict(input_ids=ids, attention_mask=mask, pad_token_id=0, eos_token_id=None,
                  max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    arms = {"plain generate": lambda **kw: model.generate(**kw),
            "prompts prefilled once": lambda **kw: generate_sharing_prompts(model, **kw)}

    with torch.no_grad():
        greedy = [arm(**common, do_sample=False) for arm in arms.values()]
        same = bool(torch.equal(*greedy))
        times: dict[str, list[float]] = {name: [] for name in arms}
        for repeat in range(args.repeats + 1):
            order = list(arms) if repeat % 2 == 0 else list(reversed(arms))
            for name in order:
                torch.manual_seed(repeat)
                start = time.perf_counter()
                arms[name](**common, do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
                if repeat > 0:  # the first round warms both up
                    times[name].append(time.perf_counter() - start)

    tokens = len(prompts) * args.new_tokens
    print(f"{args.prompts} prompts x k={args.k} ({len(prompts)} rows, prompts {min(map(len, prompts))}-{width} "
          f"tokens), {args.new_tokens} sampled tokens each; median of {args.repeats} alternating runs, "
          f"{torch.get_num_threads()} threads")
    print("| | seconds | sampled tokens/s |")
    print("|---|---|---|")
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, seconds in medians.items():
        print(f"| {name} | {seconds:.2f} ({', '.join(f'{v:.2f}' for v in times[name])}) | {tokens / seconds:.0f} |")
    plain, shared = medians["plain generate"], medians["prompts prefilled once"]
    print(f"prefilled once / plain: {plain / shared:.2f}x the speed ({plain - shared:.2f} s less per rollout); "
          f"greedy tokens identical: {same}")


if __name__ == "__main__":
    main()
