"""TrainConfig: the one typed configuration of a training job, from YAML and flags, validated at the boundary."""

import dataclasses
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml

from ps.common.errors import UserError
from ps.common.faults import parse_cadence, parse_faults
from ps.common.protocol import ReplicaSettings
from ps.common.resources import parse_resources

DEVICES = ("auto", "cpu", "cuda")


def opt(default: Any, help: str):
    """A config field whose help text the CLI shows for its flag."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    replicas: int = opt(4, "N model replicas, each with a disjoint partition of the data")
    shards: int = opt(2, "M parameter-server shards")
    model: str = opt("cnn", "mlp | cnn | package.module:factory")
    dataset: str = opt("fashion-mnist", "fashion-mnist | synthetic")
    data_dir: Optional[str] = opt(None, "folder with the four IDX files (else DOWNPOUR_DATA, cache, Debian)")
    epochs: int = opt(3, "passes of each replica over its own partition")
    steps: Optional[int] = opt(None, "steps per replica; overrides epochs when set")
    batch_size: int = opt(32, "samples per replica step")
    optimizer: str = opt("adam", "server optimizer: sgd | momentum | adagrad | adam [:key=value,...]")
    lr: float = opt(0.003, "server learning rate, scaled per push by the lr rule and the schedule")
    local_lr: Optional[float] = opt(None, "replica's own SGD step between fetches (n_fetch > 1); default lr")
    lr_rule: str = opt("inverse", "constant | inverse | inverse_mean | exponential | pkg.mod:fn [:k=v]")
    lr_schedule: str = opt("cosine", "constant | cosine | linear: lr over the planned updates of each shard")
    n_fetch: int = opt(1, "fetch parameters every n_fetch steps")
    n_push: int = opt(1, "push accumulated gradients every n_push steps")
    max_inflight: int = opt(2, "pushes a replica may have unacknowledged before it waits")
    prefetch: Optional[bool] = opt(None, "overlap the next fetch with the compute; default: only "
                                         "when each replica has a whole CPU or a GPU of its own")
    sharding: str = opt("balanced", "balanced | range")
    address: Optional[str] = opt(None, "Ray cluster to join; none starts a local Ray")
    device: str = opt("auto", "auto | cpu | cuda, for replicas")
    seed: int = opt(0, "seeds the initial weights, the data partitions and the batch order")
    run_dir: Optional[str] = opt(None, "default runs/<time>-<model>-r<N>s<M>")
    eval_every: float = opt(1.0, "evaluate every this many epochs of progress (0: only at the end)")
    event_log: bool = opt(True, "record every push and fetch in RUN_DIR/events.msgpack (staleness, "
                                "report and top read it); off only to measure its cost")
    metrics: bool = opt(True, "export live Ray metrics from the shards: tau histogram, pushes, versions")
    metrics_port: Optional[int] = opt(None, "Prometheus port of a local Ray (default: Ray picks one); "
                                            "a cluster's is `ray start --metrics-export-port`")
    tensorboard: bool = opt(False, "write TensorBoard scalars to RUN_DIR/tensorboard (needs the "
                                   "tensorboard extra)")
    replica_cpus: Optional[float] = opt(None, "Ray CPUs per replica; default: what fits the cluster")
    shard_cpus: Optional[float] = opt(None, "Ray CPUs per shard; default: what fits the cluster")
    replica_resources: Optional[str] = opt(None, "Ray resources per replica, NAME=AMOUNT,...: "
                                                 "CPU, GPU and custom ones (CPU=1,GPU=1,replica=1)")
    shard_resources: Optional[str] = opt(None, "Ray resources per shard, e.g. CPU=1,ps=1 to put "
                                               "shards on nodes started with --resources='{\"ps\": 4}'")
    placement: str = opt("spread", "spread: shards over as many nodes as possible; pack: Ray's "
                                   "default, shards where there is room")
    threads: Optional[int] = opt(None, "torch threads per replica; default max(1, replica_cpus)")
    timeout_s: float = opt(300.0, "longest wait on any single reply before the job fails")
    clip_norm: Optional[float] = opt(None, "clip each gradient slice on its shard to this L2 norm (per "
                                           "shard: a whole gradient is clipped to clip_norm x sqrt(shards))")
    checkpoint_every: str = opt("30s", "save every shard's state to RUN_DIR/checkpoints every Ns "
                                       "seconds or N updates; 0: only at the start and the end")
    keep_checkpoints: int = opt(3, "checkpoints kept (older ones are deleted)")
    max_replica_restarts: int = opt(3, "dead replicas a job replaces before it fails")
    max_shard_restarts: int = opt(3, "dead shards a job recreates from a checkpoint before it fails")
    divergence_factor: float = opt(4.0, "end as diverged when the test loss exceeds this many times its "
                                        "best (0: never); a NaN or Inf training loss always does")
    inject_faults: Optional[str] = opt(None, "kill actors on purpose (tests, demos): ROLE:WHICH@WHEN,... "
                                             "e.g. replica:1@30s,shard:0@50%,replica:random@200")
    dry_run: bool = opt(False, "check a set-up: 3 steps per replica, then evaluate on 500 test samples")


FIELDS = {f.name: f for f in fields(TrainConfig)}

_POSITIVE_INTS = ("replicas", "shards", "epochs", "batch_size", "n_fetch", "n_push", "max_inflight",
                  "keep_checkpoints")
_CHOICES = {"device": DEVICES, "placement": ("spread", "pack")}


def from_mapping(values: dict, source: str) -> TrainConfig:
    """Build a config from YAML or flag values; unknown keys, wrong types and values out of
    range are UserErrors."""
    config = TrainConfig(**parse_values(values, source))
    validate(config)
    return config


def parse_values(values: dict, source: str) -> dict:
    """Each value checked on its own (known key, right type): field name -> value."""
    checked = {}
    for key, value in values.items():  # 'batch-size' and 'batch_size' are one key; the last wins
        name = str(key).replace("-", "_")
        if name not in FIELDS:
            raise UserError(f"{source}: unknown key '{key}'; known keys: {', '.join(FIELDS)}")
        checked[name] = _coerce(name, value, source)
    return checked


def load_yaml(path: str) -> dict:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UserError(f"config file {path}: cannot read it ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "cannot parse it"
        raise UserError(f"config file {path}{where} is not valid YAML: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must be a mapping of keys to values, got {type(data).__name__}")
    return data


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = base_type(typing.get_type_hints(TrainConfig)[name])
    optional = FIELDS[name].default is None
    if value is None and optional:
        return None
    if kind is float and isinstance(value, str):
        value = _float_or_same(value)  # YAML 1.1 reads `1e-3` as a string
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # `checkpoint_every: 500` in YAML is a number
    ok = (isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))) or (
        kind is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise UserError(f"{source}: {name} is {value!r} ({type(value).__name__}); expected {kind.__name__}")
    return kind(value)


def _float_or_same(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def base_type(hint) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def validate(c: TrainConfig) -> None:
    """Range checks that need no imports; names of models, rules and optimizers are checked by the job."""
    for name in _POSITIVE_INTS:
        value = getattr(c, name)
        if value < 1:
            raise UserError(f"{name} is {value}: set --{name.replace('_', '-')} to 1 or more")
    if c.steps is not None and c.steps < 1:
        raise UserError(f"steps is {c.steps}: set --steps to 1 or more, or leave it out to use --epochs")
    for name in ("lr", "timeout_s"):
        if not (math.isfinite(getattr(c, name)) and getattr(c, name) > 0):
            raise UserError(f"{name} is {getattr(c, name)}: set --{name.replace('_', '-')} to a number above 0")
    for name in ("local_lr", "eval_every", "replica_cpus", "shard_cpus"):
        value = getattr(c, name)
        if value is not None and not value >= 0:
            raise UserError(f"{name} is {value}: set --{name.replace('_', '-')} to 0 or more")
    if c.threads is not None and c.threads < 1:
        raise UserError(f"threads is {c.threads}: set --threads to 1 or more")
    if c.metrics_port is not None and not 1 <= c.metrics_port <= 65535:
        raise UserError(f"metrics_port is {c.metrics_port}: set --metrics-port to a port in 1..65535")
    if c.metrics_port is not None and c.address:
        raise UserError("metrics_port applies to a local Ray only: on a cluster set it with "
                        "`ray start --metrics-export-port PORT` and drop --metrics-port")
    for role in ("replica", "shard"):
        spec = getattr(c, f"{role}_resources")
        if spec is not None and "CPU" in parse_resources(spec, f"{role}_resources") \
                and getattr(c, f"{role}_cpus") is not None:
            raise UserError(f"{role}_cpus and CPU= in {role}_resources both set a {role}'s CPUs: "
                            f"give one of --{role}-cpus or --{role}-resources CPU=...")
    for name in ("max_replica_restarts", "max_shard_restarts"):
        if getattr(c, name) < 0:
            raise UserError(f"{name} is {getattr(c, name)}: set --{name.replace('_', '-')} to 0 or more")
    if c.clip_norm is not None and not (math.isfinite(c.clip_norm) and c.clip_norm > 0):
        raise UserError(f"clip_norm is {c.clip_norm}: set --clip-norm to a number above 0, or leave it out")
    if not (math.isfinite(c.divergence_factor) and (c.divergence_factor == 0 or c.divergence_factor > 1)):
        raise UserError(f"divergence_factor is {c.divergence_factor}: set --divergence-factor above 1, "
                        "or 0 to turn the test-loss alarm off")
    parse_cadence(c.checkpoint_every)
    parse_faults(c.inject_faults, c.replicas, c.shards)
    for name, allowed in _CHOICES.items():
        if getattr(c, name) not in allowed:
            raise UserError(f"{name} is '{getattr(c, name)}': choose one of {', '.join(allowed)}")


def replica_settings(c: TrainConfig) -> ReplicaSettings:
    """What a model replica needs of the job's configuration, and nothing else."""
    return ReplicaSettings(
        model=c.model, seed=c.seed, replicas=c.replicas, batch_size=c.batch_size,
        total_steps=c.steps, epochs=c.epochs, n_fetch=c.n_fetch, n_push=c.n_push,
        max_inflight=c.max_inflight, local_lr=c.lr if c.local_lr is None else c.local_lr,
        prefetch=bool(c.prefetch), device=c.device, timeout_s=c.timeout_s, event_log=c.event_log)


def to_dict(c: TrainConfig) -> dict:
    return dataclasses.asdict(c)
