"""Run ``alignkit train`` and SIGKILL the process at a chosen point (a helper for test_kill_resume.py).

    python killpoint.py <point> <step> [train overrides...]

``point`` names where the kill lands, ``step`` which optimizer step (or which checkpoint) it targets:

    none          run to the end
    step          before optimizer step <step> starts (between steps)
    model         checkpoint <step>: the model files written, the trainer state not yet
    state-torn    checkpoint <step>: half of trainer_state.pt written
    manifest      checkpoint <step>: every file and the manifest written, not yet flushed or renamed
    prune         checkpoint <step>: renamed into place, older checkpoints not yet pruned
    metrics-torn  step <step>: half of its metrics.jsonl line written
    final         the final model written to its temporary folder, not yet renamed

The process kills itself with SIGKILL (no cleanup, no atexit, no flush), as the OOM killer or a
preempted machine would. Nothing here changes what training computes.
"""

from __future__ import annotations

import os
import signal
import sys


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str, step: int) -> None:
    import torch

    from alignkit import checkpoint, loop, metrics

    saving = {"step": None}
    original_save = loop.Trainer._save

    def save(self):  # remember which checkpoint is being written
        saving["step"] = self.step
        try:
            original_save(self)
        finally:
            saving["step"] = None

    loop.Trainer._save = save
    at_target = lambda: saving["step"] == step  # noqa: E731

    if point == "step":
        original_step = loop.Trainer._train_step

        def train_step(self, stream):
            if self.step + 1 == step:
                die()
            return original_step(self, stream)

        loop.Trainer._train_step = train_step
    elif point in ("model", "state-torn"):
        original_torch_save = torch.save

        def torch_save(obj, f, *args, **kwargs):
            if at_target() and str(f).endswith(checkpoint.STATE):
                if point == "state-torn":
                    import io

                    buffer = io.BytesIO()
                    original_torch_save(obj, buffer, *args, **kwargs)
                    with open(f, "wb") as handle:
                        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                die()
            return original_torch_save(obj, f, *args, **kwargs)

        torch.save = torch_save
    elif point in ("manifest", "final"):
        original_fsync = checkpoint._fsync_tree

        def fsync_tree(root):
            name = os.path.basename(str(root))
            if (point == "manifest" and at_target()) or (point == "final" and name.startswith(".final.tmp-")):
                die()
            return original_fsync(root)

        checkpoint._fsync_tree = fsync_tree
    elif point == "prune":
        original_list = checkpoint.list_checkpoints

        def list_checkpoints(run_dir):
            if at_target():
                die()
            return original_list(run_dir)

        checkpoint.list_checkpoints = list_checkpoints
    elif point == "metrics-torn":
        original_log = metrics.MetricsLogger.log

        def log(self, at, values, split="train"):
            if at == step and split == "train":
                with open(self.path, "a") as handle:
                    handle.write('{"step": %d, "split": "train", "lo' % at)
                die()
            return original_log(self, at, values, split)

        metrics.MetricsLogger.log = log
    elif point != "none":
        raise SystemExit(f"killpoint: unknown point {point!r}")


if __name__ == "__main__":
    point, step, *overrides = sys.argv[1:]
    arm(point, int(step))
    from alignkit.cli import main

    sys.exit(main(["train", *overrides]))
