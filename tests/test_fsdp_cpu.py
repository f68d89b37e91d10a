"""Sharded policies on 2 CPU processes (gloo): the generate rollout of online methods samples the same
tokens from an FSDP-sharded policy (torch FSDP v1 and FSDP2 ``fully_shard``) as from the unsharded one,
also before the policy's first forward, and the log-prob path gives the same log-probs and gradients;
and why ``trainer=fsdp`` (accelerate) cannot run on CPU."""

from __future__ import annotations

import copy
import functools
import os
import socket

import pytest
import torch

from alignkit import distributed
from alignkit.errors import ConfigError
from conftest import write_jsonl


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _shard(policy: torch.nn.Module, kind: str) -> torch.nn.Module:
    """``policy`` sharded over the process group: each decoder layer its own unit, the rest in the root."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    if kind == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for module in policy.modules():
            if isinstance(module, LlamaDecoderLayer):
                fully_shard(module)
        return fully_shard(policy)
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    return FullyShardedDataParallel(policy, device_id=torch.device("cpu"), use_orig_params=True,
                                    auto_wrap_policy=functools.partial(transformer_auto_wrap_policy,
                                                                       transformer_layer_cls={LlamaDecoderLayer}))


def _full_gradients(policy: torch.nn.Module, kind: str) -> dict[str, torch.Tensor]:
    """Every parameter's whole gradient, named as in the unwrapped model (shards gathered)."""
    def clean(name: str) -> str:
        return name.replace("_fsdp_wrapped_module.", "")

    if kind == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(policy, with_grads=True):
            return {clean(n): p.grad.detach().clone() for n, p in policy.named_parameters()}
    return {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).detach().clone()
            for n, p in policy.named_parameters()}


def _rollout_worker(rank: int, port: int, prompts: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    torch.set_num_threads(1)
    from types import SimpleNamespace

    from accelerate import Accelerator

    from alignkit.logprobs import PolicyModule, sequence_logprobs
    from alignkit.models import load_model
    from alignkit.plugin_manager import get_manager
    from alignkit.plugins.rollouts.generate.rollout import build
    from alignkit.testing import compose_run_config

    accelerator = Accelerator(cpu=True)  # gloo, 2 processes (accelerate itself cannot shard on CPU)
    cfg = compose_run_config("method=reinforce", "scorer=function", "scorer.fn=alignkit.plugins.scorers.rewards:brevity",
                             "data=custom", f"data.path={prompts}", "data.format=prompts", "data.eval_fraction=0.25",
                             "trainer.batch_size=4", "trainer.eval_batch_size=4", "rollout.max_new_tokens=10",
                             "rollout.num_samples=2", "rollout.eval_greedy=true")
    model, tokenizer = load_model(cfg.model)
    with torch.no_grad():  # larger random weights than the default init: varied greedy tokens, not one repeated
        generator = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * (0.5 if p.dim() > 1 else 0.1) + (p.dim() == 1))
    results = {}
    for kind in ("plain", "fsdp1", "fsdp2"):
        policy = PolicyModule(copy.deepcopy(model))
        if kind != "plain":
            policy = _shard(policy, kind)
        ctx = SimpleNamespace(cfg=cfg, registry=get_manager().registry, tokenizer=tokenizer, log=lambda line: None,
                              device=torch.device("cpu"), accelerator=accelerator, policy=policy)
        rollout = build(ctx, cfg.rollout)
        held_out = list(rollout.eval_batches())  # greedy, before any forward of the policy
        sampled = rollout.next_batch(policy)  # training rollout: sampled from the seeded stream
        with torch.no_grad():  # the sharded forward still works after generating
            hidden = policy(sampled.input_ids, sampled.attention_mask)
        # The log-prob path of the update (lm_head weight used inside the wrapped forward), on the held-out
        # batch, which is the same on both ranks: FSDP's averaged gradient is then that batch's gradient.
        stats = sequence_logprobs(policy, held_out[0])
        (-stats.sum.sum()).backward()
        results[kind] = {"eval": [b.input_ids for b in held_out], "sampled": sampled.input_ids,
                         "index": sampled.index, "hidden": hidden.detach(), "training": policy.training,
                         "logps": stats.sum.detach(), "grads": _full_gradients(policy, kind),
                         "shapes": sorted({tuple(getattr(p, "_local_tensor", p).shape) for p in policy.parameters()})}
    torch.save(results, f"{out}.{rank}")
    accelerator.end_training()


def test_generation_from_a_sharded_policy_equals_the_unsharded_policy(tmp_path):
    import torch.multiprocessing as mp

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Count to {i} and then {'stop' * (i % 3)}."}
                                                      for i in range(12)])
    out = str(tmp_path / "out")
    mp.spawn(_rollout_worker, args=(_free_port(), str(prompts), out), nprocs=2, join=True)
    ranks = [torch.load(f"{out}.{rank}") for rank in (0, 1)]
    for got in ranks:
        plain = got["plain"]
        assert all(len(set(row.tolist())) > 3 for row in plain["sampled"]), "varied tokens, not one repeated"
        assert len(plain["eval"]) == 1 and plain["eval"][0].shape[0] == 3, "3 held-out prompts, greedy"
        for kind in ("fsdp1", "fsdp2"):
            sharded = got[kind]
            assert sharded["shapes"] != plain["shapes"], f"{kind}: the policy is really sharded"
            assert all(torch.equal(a, b) for a, b in zip(sharded["eval"], plain["eval"])), f"{kind}: greedy tokens"
            assert torch.equal(sharded["sampled"], plain["sampled"]), f"{kind}: sampled tokens (same seed)"
            assert torch.allclose(sharded["hidden"], plain["hidden"], atol=1e-5), kind
            assert torch.allclose(sharded["logps"], plain["logps"], atol=1e-5), f"{kind}: sequence log-probs"
            assert sharded["grads"].keys() == plain["grads"].keys()
            gap = max((sharded["grads"][k] - g).abs().max().item() for k, g in plain["grads"].items())
            assert gap < 1e-5, f"{kind}: gradients differ by {gap}"
            assert sharded["training"], "generation leaves the policy in train mode"
    assert not torch.equal(ranks[0]["plain"]["index"], ranks[1]["plain"]["index"]), "each rank its own prompts"


def test_trainer_fsdp_without_a_gpu_is_refused_not_silently_ddp(alignkit_compose):
    # accelerate 1.15 on CPU: sync_module_states=true raises "There are currently no available devices
    # found"; sync_module_states=false makes it ignore the plugin and wrap the policy in DDP.
    for extra in ((), ("trainer.fsdp.sync_module_states=false",), ("trainer.fsdp.version=2",)):
        cfg = alignkit_compose("method=sft", "trainer=fsdp", *extra)
        if torch.cuda.is_available():  # a GPU machine builds the plugin
            assert "fsdp_plugin" in distributed.accelerator_kwargs(cfg.trainer, num_processes=2)
            continue
        for processes in (1, 2):
            with pytest.raises(ConfigError, match="accelerate's FSDP needs GPUs .*use trainer=ddp on CPU"):
                distributed.accelerator_kwargs(cfg.trainer, num_processes=processes)
