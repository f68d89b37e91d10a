"""Peak memory of DPO on SmolLM2-135M with and without LoRA (reference = same model, adapters off).

Full fine-tuning keeps, besides the policy, a frozen reference copy (``method.reference=model``),
a gradient for every weight and AdamW's two moments; with ``model.lora.r > 0`` only the adapters have
gradients and optimizer state, and the reference is the policy with its adapters disabled (no copy).
Each configuration runs a few DPO steps in its own subprocess (``--one full|lora``) and reports its
peak resident set (``VmHWM``), the resident set after the model is loaded, the trainable parameter
count and the seconds per step; the parent prints the table.

    flock /tmp/alignkit-heavy.lock python benchmarks/lora_memory.py [--steps 2] [--repeats 1]
    python benchmarks/lora_memory.py --one lora      # one measurement, one JSON line
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CONFIGS = {
    "full": [],
    "lora": ["model.lora.r=16", "model.lora.alpha=32", "model.lora.target_modules=[q_proj,k_proj,v_proj,o_proj]"],
}


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def measure(name: str, steps: int, batch: int, max_length: int, model: str = "smollm2") -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from alignkit.compose import compose, validate
    from alignkit.loop import Trainer

    run_dir = tempfile.mkdtemp(prefix=f"lora-memory-{name}-")
    overrides = ["method=dpo", f"model={model}", "data=hh_harmless", "method.reference=model",
                 f"trainer.max_steps={steps}", f"trainer.batch_size={batch}", "trainer.progress=false",
                 "trainer.tensorboard=false", "trainer.save_every=0", f"data.max_length={max_length}",
                 f"data.max_prompt_length={max_length // 2}", f"data.max_examples={batch * steps}",
                 "data.eval_examples=0", *CONFIGS[name]]
    cfg = compose(overrides)
    validate(cfg)
    trainer = Trainer(cfg, run_dir)
    loaded_mb = _status_kb("VmRSS") / 1024
    trainable = sum(p.numel() for g in trainer.run.optimizer.param_groups for p in g["params"])
    started = time.perf_counter()
    try:
        trainer.fit()
        seconds = time.perf_counter() - started
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)  # the final model: hundreds of MB on every run
    return {"config": name, "peak_rss_mb": round(_status_kb("VmHWM") / 1024), "rss_after_load_mb": round(loaded_mb),
            "trainable_params": trainable, "steps": steps, "pairs_per_step": batch, "max_length": max_length,
            "seconds_per_step": round(seconds / steps, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", choices=sorted(CONFIGS))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2, help="preference pairs per step")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--model", default="smollm2", help="model config (tiny for a smoke run)")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.steps, args.batch, args.max_length, args.model)), flush=True)
        return
    rows = []
    for repeat in range(args.repeats):
        order = list(CONFIGS) if repeat % 2 == 0 else list(CONFIGS)[::-1]
        for name in order:
            out = subprocess.run([sys.executable, __file__, "--one", name, "--steps", str(args.steps), "--batch",
                                  str(args.batch), "--max-length", str(args.max_length), "--model", args.model],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nDPO on model={args.model} (fp32, CPU), {args.batch} pairs x {args.max_length} tokens, {args.steps} steps, "
          f"reference=model; {args.repeats} repeat(s) each")
    print(f"{'config':<6} {'trainable params':>17} {'peak RSS MB':>12} {'RSS after load MB':>18} {'s/step':>7}")
    for name in CONFIGS:
        mine = [r for r in rows if r["config"] == name]
        peak = statistics.median(r["peak_rss_mb"] for r in mine)
        print(f"{name:<6} {mine[0]['trainable_params']:>17,} {peak:>12,} {mine[0]['rss_after_load_mb']:>18,} "
              f"{statistics.median(r['seconds_per_step'] for r in mine):>7}")
    full = statistics.median(r["peak_rss_mb"] for r in rows if r["config"] == "full")
    lora = statistics.median(r["peak_rss_mb"] for r in rows if r["config"] == "lora")
    print(f"LoRA saves {full - lora:,} MB of peak RSS ({100 * (full - lora) / full:.0f}%)")


if __name__ == "__main__":
    main()
