"""Hydra composition: every config option composes and validates; bad overrides give one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import alignkit.conf
from alignkit.compose import compose, validate
from alignkit.errors import ConfigError
from alignkit.plugin_manager import get_registry
from alignkit.testing import config_options

CONF = Path(alignkit.conf.__file__).parent


def options(group: str) -> list[str]:
    """Every ``<group>/<option>.yaml`` on the config search path: core's and every plugin's."""
    return sorted(option for (g, option) in config_options(get_registry()) if g == group)


@pytest.mark.parametrize("method", options("method"))
def test_every_method_composes_on_tiny(method, pairs_file):
    cfg = compose([f"method={method}", "model=tiny"])
    validate(cfg)
    assert cfg.method.name == method
    OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("group", ["model", "data", "trainer", "rollout", "scorer", "loss", "experiment"])
def test_every_option_of_every_group_composes(group, pairs_file):
    for option in options(group):
        extra = [f"data.path={pairs_file}"] if group == "data" and option == "custom" else []
        if group == "loss" and option != "none":  # a loss composes with the method of its family
            family = get_registry().get("losses", compose([f"loss={option}"]).loss.name).family
            extra = [f"method={next(e.name for e in get_registry().entries('methods') if e.spec.loss_family == family)}"]
        cfg = compose([f"{group}={option}", *extra])
        validate(cfg)


def test_defaults_are_the_real_model_and_bundled_data():
    cfg = compose([])
    assert (cfg.model.name, cfg.model.source, cfg.data.name, cfg.method.name) == ("smollm2", "smollm2", "hh_harmless", "sft")
    assert Path(cfg.data.path).exists() and Path(cfg.data.eval_path).exists()


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(ConfigError) as info:
        compose(["method=nope"])
    message = str(info.value)
    assert message.startswith("unknown method 'nope' (method=nope); available: ")
    assert "sft" in message and "\n" not in message


def test_unknown_key_and_wrong_type_name_the_key():
    with pytest.raises(ConfigError, match=r"^unknown config key 'trainer.max_stepz'"):
        compose(["trainer.max_stepz=3"])
    with pytest.raises(ConfigError, match=r"^config key trainer.max_steps: Value 'abc' .*Integer"):
        compose(["trainer.max_steps=abc"])
    with pytest.raises(ConfigError, match=r"^config key model.trust_remote_code"):
        compose(["model.trust_remote_code=maybe"])


def test_schema_types_every_group():
    cfg = compose(["model=tiny"])
    assert OmegaConf.get_type(cfg.trainer).__name__ == "TrainerConfig"
    assert OmegaConf.get_type(cfg.model).__name__ == "ModelConfig"
    assert OmegaConf.get_type(cfg.data).__name__ == "DataConfig"
    assert OmegaConf.get_type(cfg.method).__name__ == "SFTConfig"
    assert OmegaConf.get_type(cfg.rollout).__name__ == "DatasetRolloutConfig"


def test_experiment_overrides_groups_and_cli_overrides_experiment():
    cfg = compose(["experiment=quickstart", "trainer.max_steps=3"])
    assert cfg.model.name == "smollm2" and cfg.trainer.max_steps == 3 and cfg.data.max_length == 256
