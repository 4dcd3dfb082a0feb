"""TrainConfig from YAML and flags: types, unknown keys, ranges; spec parsing."""

import pytest

from ps.common.config import TrainConfig, from_mapping, load_yaml
from ps.common.errors import UserError
from ps.common.specs import parse_spec


def test_defaults_fit_the_documented_job():
    c = from_mapping({}, "flags")
    assert (c.replicas, c.shards, c.model, c.dataset, c.epochs) == (4, 2, "cnn", "fashion-mnist", 3)


def test_hyphen_and_underscore_keys_both_work():
    c = from_mapping({"batch-size": 64, "n_fetch": 2, "lr": 1}, "config file x.yaml")
    assert (c.batch_size, c.n_fetch, c.lr) == (64, 2, 1.0)
    assert isinstance(c.lr, float)


@pytest.mark.parametrize("values, words", [
    ({"replicas": 0}, ["replicas is 0", "--replicas", "1 or more"]),
    ({"shards": -2}, ["shards is -2", "--shards"]),
    ({"batch_size": 0}, ["batch_size", "--batch-size"]),
    ({"epochs": "3"}, ["epochs", "expected int"]),
    ({"replicas": True}, ["replicas", "expected int"]),
    ({"lr": 0}, ["lr is 0", "--lr"]),
    ({"lr": float("nan")}, ["lr is nan"]),
    ({"prefetch": "yes"}, ["prefetch", "expected bool"]),
    ({"device": "tpu"}, ["device", "auto, cpu, cuda"]),
    ({"repliacs": 4}, ["unknown key 'repliacs'", "replicas"]),
    ({"steps": 0}, ["steps is 0"]),
    ({"threads": 0}, ["threads is 0"]),
])
def test_bad_values_name_the_field_and_the_fix(values, words):
    with pytest.raises(UserError) as err:
        from_mapping(values, "config file job.yaml")
    assert all(w in str(err.value) for w in words), str(err.value)


def test_yaml_loading(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("replicas: 2\nlr-rule: exponential:gamma=0.9\n")
    assert load_yaml(str(good)) == {"replicas": 2, "lr-rule": "exponential:gamma=0.9"}
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        load_yaml(str(tmp_path / "list.yaml"))
    (tmp_path / "bad.yaml").write_text("replicas: 2\nlr: 0.1: 2\n")
    with pytest.raises(UserError, match="line 2, column 8 is not valid YAML: mapping values") as err:
        load_yaml(str(tmp_path / "bad.yaml"))
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="cannot read"):
        load_yaml(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("spec, expected", [
    ("inverse", ("inverse", {})),
    ("exponential:gamma=0.9", ("exponential", {"gamma": 0.9})),
    ("exponential:gamma=0.5, alpha=2", ("exponential", {"gamma": 0.5, "alpha": 2.0})),
    ("pkg.mod:fn", ("pkg.mod:fn", {})),
    ("pkg.mod:fn:beta=3", ("pkg.mod:fn", {"beta": 3.0})),
])
def test_parse_spec(spec, expected):
    assert parse_spec(spec, "lr_rule") == expected


def test_yaml_style_exponents_are_floats():
    # YAML 1.1 reads 1e-3 (no dot) as a string; a learning rate written so must still work
    assert from_mapping({"lr": "1e-3"}, "config file x.yaml").lr == 0.001
    with pytest.raises(UserError, match="lr is 'fast'"):
        from_mapping({"lr": "fast"}, "config file x.yaml")


def test_train_config_is_a_plain_dataclass():
    assert TrainConfig(replicas=3).replicas == 3
