"""Fuzzed flags and YAML files through the config layer `downpour train` runs before Ray starts:
every input is accepted, or refused with one line (exit 2); none raises anything else or hangs."""

import contextlib
import io
import os
import random
import typing
from collections import Counter
from typing import NamedTuple, Optional

import pytest

from ps.cli import build_parser
from ps.cli.train import config_values
from ps.common import config as cfg
from ps.common.errors import UserError
from ps.common.faults import parse_cadence, parse_faults
from ps.common.resources import parse_resources
from ps.server.optimizers import parse_optimizer
from ps.server.rules import make_rule
from ps.server.schedules import get_schedule

SEED, RANDOM_INPUTS = 14, 300


class Case(NamedTuple):
    label: str
    flags: list
    yaml: Optional[bytes] = None  # written to a file given as --config
    refused_with: Optional[str] = None  # a known bad input: must be refused, naming this


def nested(levels: int) -> bytes:
    return b"lr: " + b"[" * levels + b"]" * levels + b"\n"


# The inputs of issue 14, items 1-5 (config part): each must be refused, naming the field.
KNOWN = [
    Case("seed -1", ["--seed", "-1"], refused_with="seed"),
    Case("seed 2**64+1", ["--seed", "18446744073709551617"], refused_with="seed"),
    Case("yaml not utf-8", [], b"model: mlp\n# caf\xe9 \xff\xfe\n", "UTF-8"),
    Case("yaml utf-16", [], "replicas: 2\n".encode("utf-16"), "UTF-8"),
    Case("yaml nested 5000 levels", [], nested(5000), "nested"),
    Case("lr 400-digit int", [], b"lr: 1" + b"0" * 399 + b"\n", "lr"),
    Case("config /dev/zero", ["--config", "/dev/zero"], refused_with="not a regular file"),
    Case("config over 1 MB", [], b"# " + b"x" * (1 << 20) + b"\n", "larger than 1 MB"),
    Case("shards 300000", ["--shards", "300000"], refused_with="--shards"),
    Case("replicas 300000", ["--replicas", "300000"], refused_with="--replicas"),
    Case("local-lr inf", ["--local-lr", "inf"], refused_with="--local-lr"),
    Case("lr 1e-320", ["--lr", "1e-320"], refused_with="--lr"),
    Case("lr 1e308", ["--lr", "1e308"], refused_with="--lr"),
    Case("timeout 1e-9", ["--timeout-s", "1e-9"], refused_with="cannot come back that fast"),
    Case("threads 1e9", ["--threads", "1000000000"], refused_with="--threads"),
    Case("replica-cpus 0", ["--replica-cpus", "0"], refused_with="--replica-cpus"),
    Case("shard-cpus 0", ["--shard-cpus", "0"], refused_with="--shard-cpus"),
    Case("replica-resources CPU=0", ["--replica-resources", "CPU=0"], refused_with="replica_resources"),
    Case("learning_rate key", [], b"learning_rate: 0.01\n", "did you mean 'lr'?"),
    Case("num_replicas key", [], b"num_replicas: 2\n", "did you mean 'replicas'?"),
    Case("flag-like key", [], b"--shards: 2\n", "did you mean 'shards'?"),
    Case("fail-on-rejected 1.5", ["--fail-on-rejected", "1.5"], refused_with="--fail-on-rejected"),
    Case("fail-on-rejected -0.1", [], b"fail_on_rejected: -0.1\n", "--fail-on-rejected"),
    Case("str with a line break", [], b'model: "cnn\\nmlp"\n', "model"),
    Case("an impossible date", [], b"model: 2024-13-45\n", "config file"),
]

INTS = ["0", "1", "2", "7", "-1", "-0", "+5", "4096", "4097", "300000", "4294967295", "4294967296",
        "18446744073709551617", "9" * 400, "1e3", "1.5", "", " ", "abc", "\u0663", "1_000", "0x10"]
FLOATS = ["0", "-0", "0.5", "1", "1e-9", "1e-30", "1e-31", "1e-320", "5e-324", "1e6", "1e7", "1e308",
          "1e999", "nan", "NaN", "inf", "-inf", "-1", "", "x", "1,5", "\u0660.\u0665", "1e-3", "0.999", "1.0001"]
STRINGS = ["", " ", "cnn", "mlp", "synthetic", "\u00fcn\u00efc\u00f6d\u00e9", "\u6a21\u578b", "\U0001f642",
           "a:b", "pkg.mod:fn", "x" * 300, "../..", "/dev/null", "None", "null", "-", "'", '"', "\\", "%s", "{}"]
SPECS = {
    "lr_rule": ["inverse", "constant", "inverse_mean", "exponential:gamma=0.9", "exponential:gamma=2",
                "exponential:gamma=nan", "constant:alpha=1e400", "inverse:alpha=", "inverse:=1", ":", "::",
                "exponential:gamma=0.9,gamma=0.5", "exponential:beta=1", "math:sqrt", "math:nope",
                "no_such_module_xyz:fn", "inverse:alpha=-1", "Inverse", "inverse:alpha=1,"],
    "optimizer": ["adam", "sgd", "momentum:momentum=0.95", "adam:beta1=1", "adam:eps=-1", "sgd:lr=1",
                  "adagrad:eps=1e-400", "momentum:momentum=nan", "Adam", "adam:", "adam:beta1=0.9:beta2=1"],
    "inject_faults": ["replica:1@30s", "shard:0@50%", "replica:random@200", "replica:99@10%", "shard:0@101%",
                      "replica:random@1e9", "replica:-1@3", ",,,", "replica:1@30s,shard:0@50%", "gpu:0@1",
                      "replica:0@" + "9" * 400, "replica:0@30 s"],
    "checkpoint_every": ["30s", "0", "500", "1.5", "-1", "1e3", "inf", "30 s", "9" * 400 + "s", "s", "0s"],
    "replica_resources": ["CPU=1", "CPU=-1", "GPU=nan", "=1", "CPU", "CPU=1,CPU=2", "replica=1e400",
                          "CPU=0", "CPU=0.5,replica=1", "GPU=1", "CPU=1e-9", ",", "\u00fc=1"],
    "lr_schedule": ["cosine", "linear", "constant", "Cosine", "step", ""],
    "device": ["auto", "cpu", "cuda", "tpu", ""],
    "placement": ["spread", "pack", "PACK"],
}
SPECS["shard_resources"] = SPECS["replica_resources"]
JUNK_FLAGS = ["--replica", "--learning-rate", "-x", "--lr=", "--seed", "extra", "--", "--shards=2=3"]
UNKNOWN_KEYS = ["learning_rate", "num_replicas", "workers", "bs", "batch", "--lr", "Replicas", "1", "null",
                "true", "''", "\u00fcnknown", "x" * 100]
YAML_VALUES = ["0", "-1", "3", "1" + "0" * 400, "-1" + "0" * 400, "1e-320", "1.0e+308", ".nan", ".inf", "-.inf",
               "''", "'  '", '"\\u00fc\\u2028x"', '"a\\tb"', "[1, 2]", "{a: 1}", "~", "yes", "no", "2024-01-01",
               "2024-13-45", "!!binary aGVsbG8=", "!!python/object:os.system {}", "&a [*a]", "!!float 1e999",
               "0x1F", "0o17", "1_000", "12:30:00", "'1e-3'", '"\U0001f642"']
TOP_LEVEL = [b"", b"- 1\n- 2\n", b"just text\n", b"42\n", b"{", b"a: b: c\n", b"\t\n", b"%YAML 9.9\n---\n"]


def flag_value(rng: random.Random, name: str) -> list:
    kind = cfg.base_type(typing.get_type_hints(cfg.TrainConfig)[name])
    flag = "--" + name.replace("_", "-")
    if kind is bool:
        return [rng.choice([flag, "--no-" + flag[2:]])]
    pool = SPECS.get(name) or {int: INTS, float: FLOATS}.get(kind, STRINGS)
    value = rng.choice(pool + STRINGS[:6] if rng.random() < 0.2 else pool)
    return [f"{flag}={value}"] if rng.random() < 0.2 else [flag, value]


def random_yaml(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.08:
        return rng.choice(TOP_LEVEL)
    if roll < 0.14:
        return rng.randbytes(rng.randrange(1, 200))  # binary junk
    if roll < 0.18:
        return nested(rng.choice([3, 50, 2000, 20000]))
    lines = []
    for _ in range(rng.randrange(1, 5)):
        name = rng.choice(list(cfg.FIELDS))
        key = rng.choice([name, name.replace("_", "-")]) if rng.random() < 0.85 else rng.choice(UNKNOWN_KEYS)
        pool = [f"'{v}'" for v in SPECS.get(name, [])] + YAML_VALUES
        lines.append(f"{key}: {rng.choice(pool)}")
    return ("\n".join(lines) + "\n").encode()


def random_cases(rng: random.Random, count: int) -> list[Case]:
    cases = []
    for i in range(count):
        flags = []
        for _ in range(rng.randrange(0, 4)):
            flags += flag_value(rng, rng.choice(list(cfg.FIELDS)))
        if rng.random() < 0.08:
            flags.append(rng.choice(JUNK_FLAGS))
        yaml = random_yaml(rng) if rng.random() < 0.45 else None
        cases.append(Case(f"random {i}", flags, yaml))
    return cases


def all_cases() -> list[Case]:
    return KNOWN + random_cases(random.Random(SEED), RANDOM_INPUTS)


def argv_of(case: Case, index: int, folder) -> list:
    if case.yaml is None:
        return ["train", *case.flags]
    path = folder / f"case{index}.yaml"
    path.write_bytes(case.yaml)
    return ["train", "--config", str(path), *case.flags]


def outcome(parser, argv: list) -> tuple[str, str]:
    """("accepted", "") or ("refused", what the user reads), as `downpour train` would run up to
    starting Ray: parse, merge --config and the flags, validate, then the names `prepare` checks."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: our parser prints one line and exits 2
        assert exc.code == 2, (argv, exc.code)
        return "refused", stderr.getvalue().removesuffix("\n")
    try:
        values, source = config_values(args)
        c = cfg.from_mapping(values, source)
        parse_optimizer(c.optimizer)
        make_rule(c.lr_rule)
        get_schedule(c.lr_schedule)
        for role in ("replica", "shard"):
            if getattr(c, f"{role}_resources") is not None:
                parse_resources(getattr(c, f"{role}_resources"), f"{role}_resources")
        parse_cadence(c.checkpoint_every)
        parse_faults(c.inject_faults, c.replicas, c.shards)
    except UserError as exc:
        return "refused", f"downpour: error: {exc}"
    return "accepted", ""


@pytest.mark.timeout(60)
def test_every_fuzzed_input_is_accepted_or_refused_with_one_line(tmp_path):
    parser, counts, broken = build_parser(), Counter(), []
    for i, case in enumerate(all_cases()):
        argv = argv_of(case, i, tmp_path)
        try:
            result, message = outcome(parser, argv)
        except Exception as exc:  # a traceback for the user: collected, so all of them show at once
            counts["traceback"] += 1
            broken.append(f"{case.label} {argv[1:]!r:.200}: {type(exc).__name__}: {exc!s:.200}")
            continue
        counts[result] += 1
        if result == "refused" and len(message.splitlines()) != 1:
            broken.append(f"{case.label}: a refusal of {len(message.splitlines())} lines: {message!r:.300}")
        if case.refused_with and (result != "refused" or case.refused_with not in message):
            broken.append(f"{case.label}: expected a refusal naming {case.refused_with!r}, got {result} {message!r}")
    total = sum(counts.values())
    print(f"\nfuzz: {total} inputs: {counts['accepted']} accepted, {counts['refused']} refused with one "
          f"line, {counts['traceback']} tracebacks")
    assert not broken, "\n".join(broken)
    assert counts["accepted"] > 20 and counts["refused"] > 100  # the generator reaches both sides


def test_the_fuzzed_set_is_the_same_every_run():
    assert all_cases() == all_cases()
    assert len(all_cases()) == len(KNOWN) + RANDOM_INPUTS


@pytest.mark.timeout(20)
def test_a_named_pipe_as_config_is_refused_at_once(tmp_path):
    pipe = tmp_path / "job.yaml"
    os.mkfifo(pipe)  # opening it for reading would wait for a writer forever
    result, message = outcome(build_parser(), ["train", "--config", str(pipe)])
    assert result == "refused" and "not a regular file" in message


def test_an_unknown_flag_with_a_line_break_is_refused_with_one_line():
    result, message = outcome(build_parser(), ["train", "--replica\ns", "2"])
    assert result == "refused" and len(message.splitlines()) == 1, message
