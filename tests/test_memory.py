"""Training memory switches: activation checkpointing trains the same weights; freed memory is released."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from transformers.modeling_layers import GradientCheckpointingLayer

from alignkit import memory
from alignkit.metrics import read_metrics
from alignkit.models import load_model

SGD = ["trainer.max_steps=2", "rollout.shuffle=false", "trainer.max_grad_norm=0", "data.eval_fraction=0",
       "trainer.optimizer._target_=torch.optim.SGD", "trainer.optimizer.lr=0.5", "~trainer.optimizer.weight_decay",
       "trainer.batch_size=4"]


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_checkpointed_layers_train_the_same_weights(alignkit_run, sft_file, pairs_file, tmp_path, method):
    data, fmt = (sft_file, "prompt_completion") if method == "sft" else (pairs_file, "pairwise")
    common = [f"method={method}", "data=custom", f"data.path={data}", f"data.format={fmt}", *SGD]
    plain = alignkit_run(*common, run_dir=tmp_path / "plain")
    every = alignkit_run(*common, "trainer.activation_checkpointing=1", run_dir=tmp_path / "every")
    a = load_file(str(plain.final_model / "model.safetensors"))
    b = load_file(str(every.final_model / "model.safetensors"))
    for key in a:  # recomputation replays the same operations: equal to float rounding
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=key)
    loss = lambda run: [r["loss"] for r in read_metrics(run) if r["split"] == "train"]  # noqa: E731
    assert loss(every.run_dir) == pytest.approx(loss(plain.run_dir), abs=1e-6)


def test_every_nth_layer_is_checkpointed(alignkit_compose):
    model, _ = load_model(alignkit_compose().model)
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert memory.enable_activation_checkpointing(model, 0) == 0
    assert memory.enable_activation_checkpointing(model, 2) == len(layers[::2])
    assert [m.gradient_checkpointing for m in layers] == [i % 2 == 0 for i in range(len(layers))]
    with pytest.raises(ValueError, match="activation_checkpointing=-1"):
        memory.enable_activation_checkpointing(model, -1)


def test_freed_memory_goes_back_to_the_os():
    # In a fresh process: glibc serves a request from free heap chunks before it considers mmap, so in a
    # process whose heap already holds 64 MB of freed, resident space (earlier tests) RSS would not move.
    probe = textwrap.dedent("""
        import torch
        from alignkit import memory

        def rss_mb():
            with open("/proc/self/status") as handle:
                return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS")) / 1024

        assert memory.release_freed_memory()  # Linux with glibc (CI machines)
        before = rss_mb()
        block = torch.ones(64 * 1024 * 1024 // 4)  # 64 MB, touched
        grown = rss_mb() - before
        del block
        print(grown, rss_mb() - before)
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    grown, kept = map(float, out.split())
    assert grown > 48
    assert kept < 16  # unmapped at once, not kept in the heap
