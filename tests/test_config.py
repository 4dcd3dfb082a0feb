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


# --- issue 14: every bad input a one-line UserError naming the field and the fix ---------------

def refusal(values: dict) -> str:
    with pytest.raises(UserError) as err:
        from_mapping(values, "flags")
    message = str(err.value)
    assert len(message.splitlines()) == 1, message
    return message


@pytest.mark.parametrize("seed", [-1, 2**32, 18446744073709551617])
def test_a_seed_outside_32_bits_is_refused(seed):
    assert "--seed" in refusal({"seed": seed}) and "0..4294967295" in refusal({"seed": seed})
    assert from_mapping({"seed": 2**32 - 1}, "flags").seed == 2**32 - 1


def test_a_config_file_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_bytes(b"model: mlp\n# caf\xe9\n")
    with pytest.raises(UserError, match=r"is not UTF-8 text \(line 2, byte 16\): save it as UTF-8"):
        load_yaml(str(path))


def test_yaml_nested_thousands_of_levels_is_refused(tmp_path):
    for text in ("lr: " + "[" * 5000 + "]" * 5000, "".join(" " * i + "a:\n" for i in range(1400))):
        (tmp_path / "deep.yaml").write_text(text)
        with pytest.raises(UserError, match="nested too deeply"):
            load_yaml(str(tmp_path / "deep.yaml"))


def test_a_400_digit_lr_is_refused_not_an_overflow(tmp_path):
    (tmp_path / "job.yaml").write_text("lr: 1" + "0" * 399 + "\n")
    with pytest.raises(UserError, match="lr is a 400-digit number, too large for a float: give --lr"):
        from_mapping(load_yaml(str(tmp_path / "job.yaml")), "config file job.yaml")
    assert "--epochs" in refusal({"epochs": 10**30})  # ints beyond 64 bits, where no bound is closer


def test_a_config_that_is_not_a_regular_file_is_refused_without_reading(tmp_path):
    # in a child process: the old code reads /dev/zero until memory runs out
    import subprocess
    import sys
    code = ("from ps.common.config import load_yaml\nimport sys\n"
            "try:\n    load_yaml(sys.argv[1])\nexcept Exception as exc:\n    print(type(exc).__name__, exc)\n")
    for path in ("/dev/zero", str(tmp_path)):
        out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == f"UserError config file {path} is not a regular file: give --config a YAML file"


def test_a_config_over_1_mb_is_refused(tmp_path):
    (tmp_path / "big.yaml").write_bytes(b"# " + b"x" * (1 << 20))
    with pytest.raises(UserError, match="larger than 1 MB: is it the right file"):
        load_yaml(str(tmp_path / "big.yaml"))


@pytest.mark.parametrize("name", ["replicas", "shards"])
def test_replicas_and_shards_are_bounded(name):
    assert f"at most 4096 (each is a Ray actor); set --{name} to 1..4096" in refusal({name: 300000})
    assert getattr(from_mapping({name: 4096}, "flags"), name) == 4096


@pytest.mark.parametrize("values, words", [
    ({"local_lr": float("inf")}, ["local_lr is inf", "--local-lr", "finite"]),
    ({"lr": 1e-320}, ["lr is 1e-320", "1e-30..1e+06", "subnormal"]),
    ({"lr": 1e-31}, ["lr is 1e-31", "1e-30..1e+06"]),
    ({"lr": 1e308}, ["lr is 1e+308", "surely a typo"]),
    ({"local_lr": 1e7}, ["--local-lr", "or 0 for no local step"]),
    ({"timeout_s": 1e-9}, ["timeout_s is 1e-09", "--timeout-s to 1..86400", "cannot come back that fast"]),
    ({"timeout_s": 1e9}, ["--timeout-s to 1..86400"]),
    ({"threads": 1_000_000_000}, ["threads is 1000000000", "--threads to 1..1024"]),
    ({"replica_cpus": 0}, ["replica_cpus is 0", "--replica-cpus to a positive share"]),
    ({"shard_cpus": 0.0}, ["shard_cpus is 0", "--shard-cpus to a positive share"]),
    ({"shard_cpus": 1e-5}, ["--shard-cpus", "at least 0.0001"]),
    ({"replica_resources": "CPU=0,replica=1"}, ["replica_resources asks for CPU=0", "positive share"]),
    ({"eval_every": float("inf")}, ["eval_every is inf", "finite"]),
    ({"clip_norm": 1e-320}, ["clip_norm", "smallest normal float"]),
])
def test_values_that_used_to_pass_are_refused(values, words):
    message = refusal(values)
    assert all(w in message for w in words), message


def test_the_edges_of_the_new_ranges_pass():
    c = from_mapping({"lr": 1e6, "local_lr": 0, "timeout_s": 1, "threads": 1024, "replica_cpus": 1e-4,
                      "shard_cpus": 0.5, "fail_on_rejected": 1, "eval_every": 0}, "flags")
    assert (c.lr, c.local_lr, c.timeout_s, c.threads, c.fail_on_rejected) == (1e6, 0.0, 1.0, 1024, 1.0)
    assert from_mapping({"lr": 1e-30, "fail_on_rejected": 0}, "flags").lr == 1e-30


@pytest.mark.parametrize("key, close", [
    ("learning_rate", "lr"), ("num_replicas", "replicas"), ("workers", "replicas"),
    ("num_shards", "shards"), ("bs", "batch_size"), ("batch", "batch_size"), ("--lr", "lr"),
    ("--batch-size", "batch_size"), ("repliacs", "replicas"), ("Shards", "shards"),
])
def test_an_unknown_key_gets_a_did_you_mean(key, close):
    assert refusal({key: 1}) == f"flags: unknown key '{key}'; did you mean '{close}'?"


def test_an_unknown_key_without_a_close_one_lists_the_keys():
    message = refusal({"zzzz\nqqqq": 1})
    assert message.startswith("flags: unknown key 'zzzz\\nqqqq'; known keys: replicas, shards")


def test_a_yaml_key_is_named_as_written_in_its_did_you_mean(tmp_path):
    from ps.cli import build_parser
    from ps.cli.train import config_values

    (tmp_path / "job.yaml").write_text("--num-shards: 2\n")
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "job.yaml")])
    with pytest.raises(UserError, match="unknown key '--num-shards'; did you mean 'shards'"):
        config_values(args)


def test_fail_on_rejected_is_a_fraction():
    assert from_mapping({}, "flags").fail_on_rejected == 0.5
    assert from_mapping({"fail_on_rejected": "0.9"}, "flags").fail_on_rejected == 0.9
    for bad in (-0.1, 1.5, float("nan")):
        assert "--fail-on-rejected" in refusal({"fail_on_rejected": bad})


def test_text_with_a_line_break_is_refused_on_one_line():
    assert "model is 'cnn\\nmlp'" in refusal({"model": "cnn\nmlp"})
    assert "checkpoint_every" in refusal({"checkpoint_every": "30s\n"})
    with pytest.raises(UserError, match="control character"):
        parse_spec("exponential:\ngamma=0.9", "lr_rule")


def test_a_value_yaml_cannot_build_is_a_user_error(tmp_path):
    (tmp_path / "job.yaml").write_text("model: 2024-13-45\n")
    with pytest.raises(UserError, match="has a value YAML cannot build: month must be in 1..12"):
        load_yaml(str(tmp_path / "job.yaml"))
