"""The one config: named profiles under one merge rule, the gate tied to pruning, and clear errors."""

from __future__ import annotations

import pytest

from rqsid import RqsidError
from rqsid.config import PROFILES, QuantizerConfig, RqsidConfig, load_config, parse_override


def test_a_profile_fills_only_what_the_file_and_the_overrides_leave_open(tmp_path):
    path = tmp_path / "shop.toml"
    path.write_text("[quantizer]\nepochs = 7\n")
    config = load_config(path, {"generator.beam_size": 15}, profile="demo")
    assert config.quantizer.epochs == 7  # the file wins over the profile
    assert config.generator.beam_size == 15  # so do the overrides
    assert config.generator.max_train_minutes == PROFILES["demo"]["generator.max_train_minutes"]  # the profile fills the rest
    assert load_config(path).generator.max_train_minutes == RqsidConfig().generator.max_train_minutes  # no profile, defaults
    with pytest.raises(RqsidError, match="unknown config profile 'fast'"):
        load_config(profile="fast")


def test_every_profile_is_a_valid_config():
    for name, values in PROFILES.items():
        config = load_config(profile=name)
        for key, value in values.items():
            section, _, field = key.partition(".")
            assert getattr(getattr(config, section), field) == value, (name, key)


def test_the_gate_checks_the_gini_that_pruning_aims_at():
    assert load_config(overrides={"prune.gini_threshold": 0.35}).gate.max_layer2_gini == 0.35
    assert load_config(overrides={"gate.max_layer2_gini": 0.3}).prune.gini_threshold == 0.3
    same = load_config(overrides={"gate.max_layer2_gini": 0.3, "prune.gini_threshold": 0.3})
    assert same.gate.max_layer2_gini == same.prune.gini_threshold == 0.3
    with pytest.raises(RqsidError, match=r"^invalid config: gate.max_layer2_gini=0.3 differs from prune.gini_threshold=0.35"):
        load_config(overrides={"gate.max_layer2_gini": 0.3, "prune.gini_threshold": 0.35})
    # a full dump validates back to the same config (what a flow parameter or a deployment does)
    config = load_config(overrides={"prune.gini_threshold": 0.35})
    assert RqsidConfig.model_validate(config.model_dump(mode="json")) == config


def test_errors_name_the_field_or_the_rule():
    with pytest.raises(RqsidError, match=r"^invalid config: quantizer.levels: Input should be greater than or equal to 1"):
        load_config(overrides={"quantizer.levels": 0})
    with pytest.raises(RqsidError, match=r"^invalid config: prune.level=4 but the quantizer has 3 levels$"):
        load_config(overrides={"prune.level": 4})
    assert parse_override("quantizer.hidden_dims=[64, 32]") == ("quantizer.hidden_dims", [64, 32])
    assert parse_override("embed.model_path=/models/x") == ("embed.model_path", "/models/x")
    assert QuantizerConfig(threads=2).identity() == QuantizerConfig().identity()
