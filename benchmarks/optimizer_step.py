"""Seconds per AdamW step over SmolLM2-135M's parameters on CPU: torch's three implementations side by side.

``for-loop`` (torch's default on CPU: a chain of element-wise ops per tensor), ``foreach`` (the chain
over lists of tensors) and ``fused`` (one kernel per tensor: what ``alignkit.optimizers.build_optimizer``
picks when the config leaves it open). The parameters have SmolLM2-135M's shapes (tied embeddings: 134.5M
fp32 values), random weights and gradients (fixed seed); each implementation takes a warm-up step and
then ``--steps`` timed steps, the implementations interleaved round by round so that machine noise hits
them alike. Prints the median seconds per step, the ratio to the for-loop, and how far each
implementation's weights end from the for-loop's after the same steps (float rounding only).

Usage::

    python benchmarks/optimizer_step.py            # 5 rounds (~1 min on 2 cores)
    python benchmarks/optimizer_step.py --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

IMPLEMENTATIONS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
# SmolLM2-135M: hidden 576, MLP 1536, 30 layers, 9 query and 3 key/value heads of 64, vocabulary 49,152.
D, FF, LAYERS, KV, VOCAB = 576, 1536, 30, 192, 49152
LAYER_SHAPES = [(D, D), (KV, D), (KV, D), (D, D), (FF, D), (FF, D), (D, FF), (D,), (D,)]


def smollm2_shapes() -> list[tuple[int, ...]]:
    return [(VOCAB, D), *LAYER_SHAPES * LAYERS, (D,)]


def make(shapes: list[tuple[int, ...]], implementation: str) -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:
    generator = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=generator) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator) * 1e-3
    optimizer = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.0, **IMPLEMENTATIONS[implementation])
    optimizer.step()  # warm-up: allocates the state
    return params, optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per implementation per round")
    args = parser.parse_args()
    shapes = smollm2_shapes()
    built = {name: make(shapes, name) for name in IMPLEMENTATIONS}
    print(f"AdamW over {sum(p.numel() for p in built['fused'][0]) / 1e6:.1f}M fp32 parameters, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds x {args.steps} steps")
    seconds: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    for _ in range(args.rounds):
        for name, (_, optimizer) in built.items():
            for _ in range(args.steps):
                start = time.perf_counter()
                optimizer.step()
                seconds[name].append(time.perf_counter() - start)
    reference = built["for-loop"][0]
    base = statistics.median(seconds["for-loop"])
    print(f"{'implementation':<15}{'s/step (median)':>16}{'vs for-loop':>13}{'max |w - w_for-loop|':>24}")
    for name, (params, _) in built.items():
        median = statistics.median(seconds[name])
        gap = max(float((p - r).detach().abs().max()) for p, r in zip(params, reference))
        print(f"{name:<15}{median:>16.3f}{base / median:>12.2f}x{gap:>24.2e}")


if __name__ == "__main__":
    main()
