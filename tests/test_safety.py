"""Safe loading: no pickle anywhere, weights_only for torch.load, remote code only when asked for.

The promises in the README ("Safety") are checked here: by reading the source of every package we
ship (an AST scan, so a new module cannot slip past) and by feeding a booby-trapped checkpoint.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from alignkit.checkpoint import STATE, load_state
from alignkit.errors import CheckpointError, ModelError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = [REPO / d for d in ("core", "kernels", "plugins", "conf")] + sorted((REPO / "contrib").glob("*/src"))
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "joblib", "marshal", "shelve"}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _sources():
    files = [p for root in SHIPPED for p in root.rglob("*.py")]
    assert len(files) > 50, "the scan found the source tree"
    return [(p, ast.parse(p.read_text(), filename=str(p))) for p in files]


def test_no_pickle_and_every_torch_load_is_weights_only():
    problems = []
    for path, tree in _sources():
        where = path.relative_to(REPO)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                # core/checkpoint.py imports pickle only to name the error torch raises for a refused file.
                bad = {n.split(".")[0] for n in names} & UNSAFE_MODULES
                if bad and not (str(where) == "core/checkpoint.py" and bad == {"pickle"}):
                    problems.append(f"{where}:{node.lineno}: imports {bad}")
        for call in _calls(tree):
            name = _name(call.func)
            if name.endswith("pickle.load") or name.endswith("pickle.loads"):
                problems.append(f"{where}:{call.lineno}: {name}")
            if name == "torch.load":
                kwargs = {k.arg: k.value for k in call.keywords}
                safe = isinstance(kwargs.get("weights_only"), ast.Constant) and kwargs["weights_only"].value is True
                if not safe:
                    problems.append(f"{where}:{call.lineno}: torch.load without weights_only=True")
    assert not problems, problems


def test_remote_code_is_never_switched_on_in_the_source():
    problems = []
    for path, tree in _sources():
        for call in _calls(tree):
            for keyword in call.keywords:
                if keyword.arg == "trust_remote_code" and not (
                        isinstance(keyword.value, ast.Attribute) and keyword.value.attr == "trust_remote_code"):
                    problems.append(f"{path.relative_to(REPO)}:{call.lineno}: trust_remote_code={ast.unparse(keyword.value)}")
    assert not problems, problems
    for yaml in (REPO / "conf" / "model").glob("*.yaml"):
        assert "trust_remote_code: true" not in yaml.read_text().lower(), yaml


class _Trap:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    trap = _Trap()
    trap.marker = str(tmp_path / "pwned")
    (tmp_path / "ckpt").mkdir()
    torch.save({"step": 3, "payload": trap}, tmp_path / "ckpt" / STATE)
    with pytest.raises(CheckpointError, match=rf"{STATE}: refused to load: it holds more than plain data"):
        load_state(tmp_path / "ckpt")
    assert not (tmp_path / "pwned").exists(), "nothing in the file ran"


def test_a_model_folder_with_custom_code_needs_the_users_consent(tmp_path):
    from alignkit.compose import compose
    from alignkit.models import load_model

    folder = tmp_path / "remote"
    folder.mkdir()
    marker = tmp_path / "ran"
    (folder / "config.json").write_text(json.dumps({
        "model_type": "custom_remote", "auto_map": {"AutoConfig": "modeling_remote.RemoteConfig",
                                                    "AutoModelForCausalLM": "modeling_remote.RemoteModel"}}))
    (folder / "modeling_remote.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    from alignkit.models import BUNDLED_TOKENIZER

    cfg = compose(["model=tiny", f"model.path={folder}", f"model.tokenizer_path={BUNDLED_TOKENIZER}"])
    with pytest.raises(ModelError, match=rf"model.path={folder}: cannot load a causal LM"):
        load_model(cfg.model)
    assert not marker.exists(), "the folder's code did not run"
