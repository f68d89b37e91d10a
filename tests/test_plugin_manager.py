"""The plugin manager: load order, allow/deny lists, duplicates, broken plugins, tracing."""

from __future__ import annotations

import importlib.metadata as md
import sys
import textwrap
from pathlib import Path

import pytest

from alignkit.errors import DuplicateNameError
from alignkit.plugin_manager import BUILTIN_PLUGINS, PluginManager

PLUGIN_TEMPLATE = '''
from alignkit.hookspecs import hookimpl
from alignkit.specs import LossSpec, MethodSpec

def fn(x):
    """{summary}"""
    return x

@hookimpl
def register_losses(register):
    register(LossSpec(name="{loss}", fn=fn))
'''


def make_plugin(tmp_path: Path, module: str, loss: str, body: str | None = None) -> md.EntryPoint:
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(body or PLUGIN_TEMPLATE.format(summary=f"{loss} loss", loss=loss)))
    return md.EntryPoint(name=module.replace("_", "-"), value=module, group="alignkit")


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("ALIGNKIT_PLUGINS", raising=False)
    monkeypatch.delenv("ALIGNKIT_DISABLE_PLUGINS", raising=False)
    yield tmp_path
    for name in list(sys.modules):
        if name.startswith("fake_"):
            del sys.modules[name]


def test_builtins_load_first_and_register_everything():
    manager = PluginManager(entry_points=[]).load()
    assert list(manager.infos) == list(BUILTIN_PLUGINS)
    assert "sft" in manager.registry.names("methods")
    assert {"chat", "pairwise", "hh_rlhf", "ranked", "prompts", "prompt_completion"} <= set(manager.registry.names("data_formats"))
    assert manager.registry.owner("methods", "sft").distribution == "alignkit"
    assert manager.failures == []


def test_entry_points_load_after_builtins_in_name_order(plugin_dir):
    eps = [make_plugin(plugin_dir, "fake_zeta", "zeta_loss"), make_plugin(plugin_dir, "fake_alpha", "alpha_loss")]
    manager = PluginManager(entry_points=eps).load()
    assert list(manager.infos)[-2:] == ["fake-alpha", "fake-zeta"]
    assert manager.registry.owner("losses", "alpha_loss").name == "fake-alpha"


def test_allow_list_and_deny_list(plugin_dir, monkeypatch):
    eps = [make_plugin(plugin_dir, "fake_one", "one_loss"), make_plugin(plugin_dir, "fake_two", "two_loss")]
    monkeypatch.setenv("ALIGNKIT_PLUGINS", "fake-two")
    names = PluginManager(entry_points=eps).load().registry.names("losses")
    assert "two_loss" in names and "one_loss" not in names

    monkeypatch.setenv("ALIGNKIT_PLUGINS", "")  # empty allow-list: built-ins only
    names = PluginManager(entry_points=eps).load().registry.names("losses")
    assert "one_loss" not in names and "two_loss" not in names and "dpo" in names

    monkeypatch.delenv("ALIGNKIT_PLUGINS")
    monkeypatch.setenv("ALIGNKIT_DISABLE_PLUGINS", "fake-one,alignkit.plugins.dpo")
    names = PluginManager(entry_points=eps).load().registry.names("losses")
    assert "two_loss" in names and "one_loss" not in names and "dpo" not in names


def test_duplicate_names_raise_naming_both_owners(plugin_dir):
    eps = [make_plugin(plugin_dir, "fake_dup", "dpo")]
    with pytest.raises(DuplicateNameError) as info:
        PluginManager(entry_points=eps).load()
    message = str(info.value)
    assert "loss 'dpo' is registered twice" in message
    assert "alignkit.plugins.dpo (alignkit 0.1.0)" in message and "fake-dup" in message


def test_plugin_failing_on_import_is_reported_and_skipped(plugin_dir):
    broken = make_plugin(plugin_dir, "fake_broken", "x", body="raise ImportError('needs libfoo')\n")
    good = make_plugin(plugin_dir, "fake_good", "good_loss")
    with pytest.warns(RuntimeWarning, match="fake-broken.*import.*needs libfoo"):
        manager = PluginManager(entry_points=[broken, good]).load()
    assert "good_loss" in manager.registry.names("losses")
    [failure] = manager.failures
    assert (failure.name, failure.stage) == ("fake-broken", "import")
    assert failure.error == "ImportError: needs libfoo"
    assert manager.report()["failures"][0]["error"] == "ImportError: needs libfoo"


def test_plugin_failing_inside_a_hook_is_skipped_whole(plugin_dir):
    body = '''
from alignkit.hookspecs import hookimpl
from alignkit.specs import LossSpec

@hookimpl
def register_losses(register):
    register(LossSpec(name="half_registered", fn=abs))

@hookimpl
def register_methods(register):
    raise RuntimeError("boom")
'''
    ep = make_plugin(plugin_dir, "fake_hookfail", "x", body=body)
    with pytest.warns(RuntimeWarning, match="register_methods"):
        manager = PluginManager(entry_points=[ep]).load()
    assert "half_registered" not in manager.registry.names("losses")
    assert "fake-hookfail" not in manager.infos
    assert manager.failures[0].stage == "register_methods"


def test_trace_prints_hook_calls(plugin_dir, monkeypatch, capsys):
    monkeypatch.setenv("ALIGNKIT_TRACE_PLUGINS", "1")
    PluginManager(entry_points=[make_plugin(plugin_dir, "fake_traced", "traced_loss")]).load()
    assert "[alignkit trace] fake-traced.register_losses -> ['traced_loss']" in capsys.readouterr().err


def test_losses_module_exposes_registered_losses():
    import alignkit.losses as losses

    assert callable(losses.dpo) and callable(losses.plackett_luce) and callable(losses.nll)
    with pytest.raises(AttributeError, match="unknown loss 'nope'"):
        losses.nope  # noqa: B018
    assert "dpo" in dir(losses)


def test_every_hookspec_has_a_docstring():
    from alignkit import hookspecs

    for name in hookspecs.HOOK_NAMES:
        assert len((getattr(hookspecs, name).__doc__ or "").strip()) > 80, name
