"""Memory and time of per-token log-probs through the lm_head, forward + backward, on CPU.

SmolLM2 dimensions (d = 576, V = 49,152), B x T = 8 x 1024 tokens, float32, random data (fixed seed),
gradients w.r.t. both ``hidden`` and ``weight``. Each measurement runs in its own subprocess
(``python benchmarks/logprobs.py --one <approach>``) so that peak RSS is per approach; the order of
approaches alternates between repeats and the table reports medians.

Peak memory is the resident-set high-water mark (``VmHWM``) above the resident set measured after
the inputs are allocated; the high-water mark is reset at that moment through
``/proc/self/clear_refs`` so that imports do not count.

Usage::

    nice python benchmarks/logprobs.py            # full run (several minutes on 2 cores)
    python benchmarks/logprobs.py --quick         # small shapes, smoke run
    python benchmarks/logprobs.py --one naive     # one measurement, prints one JSON line
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

APPROACHES: dict[str, str] = {
    "naive": "logits = h @ W.T; log_softmax; gather",
    "trl": "TRL-style selective log-softmax (per-row logsumexp loop)",
    "native": "torch F.linear_cross_entropy(reduction='none')",
    "alignkit": "alignkit linear_token_logprobs(backend='torch')",
    "matmul": "floor: the three matmuls (logits, grad hidden, grad weight)",
}
FULL = dict(b=8, t=1024, d=576, v=49152)
QUICK = dict(b=2, t=128, d=64, v=4096)
IGNORE = -100


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> None:
    # Writing 5 resets VmHWM to the current RSS (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _inputs(b: int, t: int, d: int, v: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(b, t, d, generator=gen).requires_grad_()  # (B, T, d)
    weight = (torch.randn(v, d, generator=gen) * d**-0.5).requires_grad_()  # (V, d)
    labels = torch.randint(0, v, (b, t), generator=gen)  # (B, T)
    labels[:, : t // 8] = IGNORE  # a prompt part, as in real batches
    return hidden, weight, labels


def _run(name: str, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> None:
    b, t, d = hidden.shape
    if name == "matmul":
        with torch.no_grad():
            logits = hidden.reshape(-1, d) @ weight.T  # (N, V)
            hidden.grad = (logits @ weight).view(b, t, d)  # (N, d) reuse logits as the gradient
            weight.grad = logits.T @ hidden.reshape(-1, d)  # (V, d)
        return
    if name == "naive":
        logits = hidden @ weight.T  # (B, T, V)
        logp = torch.log_softmax(logits, dim=-1).gather(-1, labels.clamp(min=0)[..., None])
        logp = logp.squeeze(-1) * (labels != IGNORE)  # (B, T)
    elif name == "trl":
        logits = hidden @ weight.T  # (B, T, V)
        selected = logits.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)  # (B, T)
        lse = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])  # (B, T)
        logp = (selected - lse) * (labels != IGNORE)  # (B, T)
    elif name == "native":
        nll = F.linear_cross_entropy(
            hidden.reshape(-1, d), weight, labels.reshape(-1), reduction="none",
            ignore_index=IGNORE, options=torch.nn.LinearCrossEntropyOptions(),
        )  # (N,)
        logp = -nll
    elif name == "alignkit":
        from alignkit.kernels import linear_token_logprobs

        logp = linear_token_logprobs(hidden, weight, labels, backend="torch")  # (B, T)
    else:
        raise SystemExit(f"unknown approach {name!r}; choose from {', '.join(APPROACHES)}")
    logp.sum().backward()


def run_one(name: str, shape: dict[str, int]) -> dict[str, float]:
    """Measure one approach in this process: peak RSS above the post-input baseline, wall time and
    CPU time (user + system of this process, less sensitive than wall time to other load)."""
    torch.manual_seed(0)
    # Warm up code paths (imports, lazy inits) on a tiny shape so that they do not count.
    _run(name, *_inputs(1, 16, 16, 64))
    hidden, weight, labels = _inputs(**shape)
    _reset_peak()
    base = _status_kb("VmRSS")
    start, cpu_start = time.perf_counter(), time.process_time()
    _run(name, hidden, weight, labels)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = _status_kb("VmHWM") - base
    return {"approach": name, "seconds": seconds, "cpu_seconds": cpu, "peak_mb": peak / 1024}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", choices=list(APPROACHES), help="measure one approach, print JSON")
    parser.add_argument("--quick", action="store_true", help="small shapes (smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--approaches", default=",".join(APPROACHES), help="comma-separated subset to run"
    )
    args = parser.parse_args(argv)
    shape = QUICK if args.quick else FULL
    if args.one:
        print(json.dumps(run_one(args.one, shape)))
        return

    names = [n for n in args.approaches.split(",") if n]
    load_start = os.getloadavg()[0]
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(args.repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            cmd = [sys.executable, __file__, "--one", name] + (["--quick"] if args.quick else [])
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
            print(f"# repeat {r + 1} {name}: {results[name][-1]}", file=sys.stderr, flush=True)

    med: Callable[[str, str], float] = lambda n, k: statistics.median(x[k] for x in results[n])
    print(
        f"shape: B={shape['b']} T={shape['t']} d={shape['d']} V={shape['v']} float32, "
        f"forward+backward (hidden, weight), medians of {args.repeats} subprocess runs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"1-min load average {load_start:.1f} at start / {os.getloadavg()[0]:.1f} at end"
    )
    print()
    print(
        "| approach | peak above baseline (MB) | time (s) | CPU time (s) | peak / naive | "
        "time / naive | CPU time / naive | time / matmul floor |"
    )
    print("|---|---|---|---|---|---|---|---|")
    naive_peak = med("naive", "peak_mb") if "naive" in results else float("nan")
    naive_time = med("naive", "seconds") if "naive" in results else float("nan")
    naive_cpu = med("naive", "cpu_seconds") if "naive" in results else float("nan")
    floor = med("matmul", "seconds") if "matmul" in results else float("nan")
    for name in names:
        peak, secs, cpu = med(name, "peak_mb"), med(name, "seconds"), med(name, "cpu_seconds")
        print(
            f"| {name}: {APPROACHES[name]} | {peak:.0f} | {secs:.2f} | {cpu:.2f} | "
            f"{peak / naive_peak:.3f} | {secs / naive_time:.2f} | {cpu / naive_cpu:.2f} | "
            f"{secs / floor:.2f} |"
        )


if __name__ == "__main__":
    main()
