"""Scale-out: 2 processes (DDP on gloo) equal 1 process at the same global batch; launcher; presets;
the policy's forward is the one accelerate wraps; sharding and loss normalisation across ranks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from alignkit import distributed
from alignkit.batches import TokenBatch
from alignkit.errors import ConfigError
from alignkit.testing import TINY_DEFAULTS

RUN = ("trainer.batch_size=4", "trainer.max_steps=3", "trainer.optimizer.lr=2e-4", "trainer.eval_batch_size=8")


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "final" / "model.safetensors"))


@pytest.mark.parametrize("method", ["sft", "dpo"])
def test_two_processes_equal_one_process_at_the_same_global_batch(method, cli, alignkit_run, sft_file, pairs_file, tmp_path):
    data = (f"data.path={sft_file}", "data.format=prompt_completion") if method == "sft" else \
        (f"data.path={pairs_file}", "data.format=pairwise")
    overrides = (f"method={method}", "data=custom", *data, *RUN)
    two = tmp_path / "two"
    result = cli("launch", "--nproc", "2", *TINY_DEFAULTS, *overrides, f"hydra.run.dir={two}", timeout=400)
    assert result.returncode == 0, result
    assert "launching 2 processes" in result.stdout and "finished 3 steps" in result.stdout
    assert result.stdout.count("finished 3 steps") == 1, "only the main process reports"
    one = alignkit_run(*overrides, run_dir=tmp_path / "one").run_dir
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    lines = [line for line in (two / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert len(lines) == 3, "metrics are written once (main process), one line per step"


def test_launch_refuses_a_global_batch_that_does_not_split(capsys, tmp_path):
    from alignkit.cli import main

    code = main(["launch", "--nproc", "2", *TINY_DEFAULTS, "method=sft", "trainer.batch_size=3",
                 f"hydra.run.dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert code == 2 and "trainer.batch_size=3 is the global batch" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()
    assert main(["launch", "--nproc", "0", "method=sft"]) == 2 and "--nproc 0" in capsys.readouterr().err


def test_launch_saves_the_config_the_workers_read(capsys, tmp_path):
    from alignkit.cli import main

    run = tmp_path / "r"
    code = main(["launch", "--nproc", "2", "--print-command", *TINY_DEFAULTS, "method=sft", "trainer.max_steps=7",
                 f"hydra.run.dir={run}"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "torch.distributed.run --standalone --nproc_per_node=2 -m alignkit.worker" in out and str(run) in out
    from omegaconf import OmegaConf

    saved = OmegaConf.load(run / "config.yaml")
    assert saved.trainer.max_steps == 7 and saved.model.name == "tiny" and (run / "plugins.json").exists()
    from alignkit.launch import worker_command

    cmd = worker_command("accelerate", 2, run)
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--multi_gpu"] and "--num_processes" in cmd


# ---------------------------------------------------------------------------- presets
@pytest.mark.parametrize("preset, strategy, stage", [("ddp", "ddp", 2), ("fsdp", "fsdp", 2), ("deepspeed", "deepspeed", 2),
                                                     ("deepspeed_zero3", "deepspeed", 3)])
def test_presets_compose_and_validate(alignkit_compose, preset, strategy, stage):
    cfg = alignkit_compose("method=dpo", f"trainer={preset}")
    assert cfg.trainer.strategy == strategy and cfg.trainer.deepspeed.zero_stage == stage
    assert cfg.trainer.max_steps == 100, "presets extend trainer=default"


def test_preset_values_are_typed_and_checked(alignkit_compose):
    with pytest.raises(ConfigError, match="trainer.deepspeed.zero_stage"):
        alignkit_compose("method=sft", "trainer=deepspeed", "trainer.deepspeed.zero_stage=abc")
    with pytest.raises(ConfigError, match="zero_stage=5; expected 0, 1, 2 or 3"):
        alignkit_compose("method=sft", "trainer=deepspeed", "trainer.deepspeed.zero_stage=5")
    with pytest.raises(ConfigError, match="trainer.fsdp.sharding_strategy='HALF'"):
        alignkit_compose("method=sft", "trainer=fsdp", "trainer.fsdp.sharding_strategy=HALF")
    with pytest.raises(ConfigError, match="trainer.strategy='mpi'"):
        alignkit_compose("method=sft", "trainer.strategy=mpi")


def test_presets_feed_accelerates_plugins(alignkit_compose):
    from accelerate.utils import FullyShardedDataParallelPlugin

    cfg = alignkit_compose("method=sft", "trainer=fsdp", "trainer.fsdp.transformer_layer_cls=LlamaDecoderLayer")
    kwargs = distributed.fsdp_plugin_kwargs(cfg.trainer)
    assert set(kwargs) <= set(FullyShardedDataParallelPlugin.__dataclass_fields__)
    assert kwargs["sharding_strategy"] == "FULL_SHARD" and kwargs["auto_wrap_policy"] == "transformer_based_wrap"
    assert kwargs["transformer_cls_names_to_wrap"] == ["LlamaDecoderLayer"]
    cfg = alignkit_compose("method=sft", "trainer=deepspeed_zero3", "trainer.batch_size=8", "trainer.grad_accum=2",
                           "trainer.deepspeed.offload_optimizer=cpu")
    ds = distributed.deepspeed_config(cfg.trainer, num_processes=4)
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["train_batch_size"] == 16
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["bf16"] == {"enabled": True} and ds["gradient_clipping"] == 1.0
    if not torch.cuda.is_available():  # this machine: clear errors instead of accelerate's
        with pytest.raises(ConfigError, match="FSDP needs GPUs"):
            distributed.accelerator_kwargs(alignkit_compose("method=sft", "trainer=fsdp").trainer)


# ---------------------------------------------------------------------------- mechanics
def _acc(n: int, rank: int = 0) -> SimpleNamespace:
    return SimpleNamespace(num_processes=n, process_index=rank, device=torch.device("cpu"))


def test_shard_gives_each_process_its_contiguous_slice():
    assert distributed.shard([5, 6, 7, 8], _acc(2, 0)) == [5, 6]
    assert distributed.shard([5, 6, 7, 8], _acc(2, 1)) == [7, 8]
    assert distributed.shard([5, 6, 7], _acc(1)) == [5, 6, 7]
    with pytest.raises(ConfigError, match="must split evenly over 2 processes"):
        distributed.shard([5, 6, 7], _acc(2))


def test_global_weights_single_process_are_the_accumulation_shares():
    shares, total = distributed.global_weights([3.0, 1.0], _acc(1))
    assert shares == [0.75, 0.25] and total == 4.0


class _CountingWrapper(torch.nn.Module):
    """Stands in for DDP: holds the module in ``.module`` and counts forward calls."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module, self.calls = module, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.module(*args, **kwargs)


def test_every_log_prob_path_goes_through_the_wrappers_forward(alignkit_compose):
    from alignkit.logprobs import PolicyModule, hidden_states, lm_head_weight, sequence_logprobs, unwrap_lm
    from alignkit.models import load_model

    model, _ = load_model(alignkit_compose("method=sft").model)
    wrapped = _CountingWrapper(PolicyModule(model))
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])  # (B, T)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])  # (B, T)
    labels = torch.tensor([[-100, 6, 7, 8], [-100, 10, 11, -100]])  # (B, T)
    batch = TokenBatch(input_ids=ids, attention_mask=mask, labels=labels)
    through = sequence_logprobs(wrapped, batch)
    assert wrapped.calls == 1
    direct = sequence_logprobs(model, batch)
    assert torch.equal(through.logprobs, direct.logprobs) and torch.equal(through.sum, direct.sum)
    assert torch.equal(hidden_states(wrapped, ids, mask), hidden_states(model, ids, mask)) and wrapped.calls == 2
    assert lm_head_weight(wrapped) is model.get_output_embeddings().weight
    assert unwrap_lm(wrapped) is model
    # The wrapper is transparent for everything else a HF model offers.
    assert wrapped.module.config is model.config and callable(wrapped.module.generate)


def test_loose_parameters_are_what_the_policy_does_not_own():
    policy, head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD([{"params": policy.parameters()}, {"params": head.parameters(), "lr": 1.0}], lr=0.1)
    loose = distributed.loose_parameters(optimizer, policy)
    assert [id(p) for p in loose] == [id(p) for p in head.parameters()]
    distributed.average_gradients(loose, _acc(1))  # one process: untouched, no collective
    assert all(p.grad is None for p in loose)


def test_full_parameters_is_a_no_op_for_an_unsharded_policy():
    model = torch.nn.Linear(2, 2)
    with distributed.full_parameters(_CountingWrapper(model)):
        pass


def _two_rank_worker(rank: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        acc = _acc(2, rank)
        head = torch.nn.Linear(2, 1)
        torch.nn.init.constant_(head.weight, float(rank))  # ranks start different: rank 0's values win
        distributed.broadcast_parameters(list(head.parameters()), acc)
        head.weight.grad = torch.full_like(head.weight, float(rank + 1))  # 1 on rank 0, 2 on rank 1
        head.bias.grad = None  # a tensor without a gradient on this step still takes part (as zeros)
        distributed.average_gradients(list(head.parameters()), acc)
        shares, total = distributed.global_weights([float(3 - 2 * rank)], acc)  # w = 3 on rank 0, 1 on rank 1
        metrics = distributed.reduce_metrics({"loss": 0.25 * (rank + 1), "tokens": 2.0}, acc)
        torch.save({"weight": head.weight.detach(), "grad": head.weight.grad, "bias_grad": head.bias.grad,
                    "shares": shares, "total": total, "metrics": metrics}, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_loose_parameters_are_synchronised_across_two_processes(tmp_path):
    import torch.multiprocessing as mp

    out = str(tmp_path / "out")
    mp.spawn(_two_rank_worker, args=(str(tmp_path / "init"), out), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(f"{out}.{rank}")
        assert torch.equal(got["weight"], torch.zeros(1, 2)), "rank 0's initial values everywhere"
        assert torch.equal(got["grad"], torch.full((1, 2), 1.5)) and torch.equal(got["bias_grad"], torch.zeros(1))
        assert got["total"] == 4.0 and got["shares"] == [2 * (3 - 2 * rank) / 4.0]  # N * w / W
        assert got["metrics"] == {"loss": 0.75, "tokens": 4.0}
