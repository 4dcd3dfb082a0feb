"""TrainConfig: the one typed configuration of a training job, from YAML and flags, validated at the boundary."""

import dataclasses
import difflib
import math
import sys
import typing
import unicodedata
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from ps.common.configfile import load_yaml, one_line  # noqa: F401 (load_yaml: public here too)
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
    epochs: int = opt(3, "passes of each replica over its own partition (--budget job: of the "
                         "replicas together over the data)")
    steps: Optional[int] = opt(None, "steps per replica; overrides epochs when set")
    budget: str = opt("replica", "how the run's steps are shared: replica (each does its own share "
                                 "and stops), job (shared by speed: the replicas end together)")
    batch_size: int = opt(32, "samples per replica step")
    optimizer: str = opt("adam", "server optimizer: sgd | momentum | adagrad | adam [:key=value,...]")
    lr: float = opt(0.003, "server learning rate, scaled per push by the lr rule and the schedule")
    local_lr: Optional[float] = opt(None, "replica's own SGD step between fetches (n_fetch > 1); default lr")
    lr_rule: str = opt("inverse", "constant | inverse | inverse_mean | exponential | pkg.mod:fn [:k=v]")
    lr_schedule: str = opt("cosine", "constant | cosine | linear: lr over the planned updates of each shard")
    consistency: str = opt("async", "when gradients become updates: async | softsync:n=K (or c=K) | "
                                    "sync | backup:b=K | ssp:bound=S | hogwild (docs/consistency.md)")
    gradient_transform: Optional[str] = opt(None, "applied by a shard before the lr rule: "
                                                  "dcasgd:lambda=L[,adaptive=1] | gap_aware | pkg.mod:fn")
    local_steps: Optional[int] = opt(None, "async local SGD: H steps of the replica's own optimizer, "
                                           "then push the parameter delta (sets n_fetch = n_push = H)")
    local_optimizer: str = opt("sgd", "the replica's own optimizer for --local-steps: sgd | adam "
                                      "(learning rate --local-lr)")
    n_fetch: int = opt(1, "fetch parameters every n_fetch steps")
    n_push: int = opt(1, "push accumulated gradients every n_push steps")
    max_inflight: int = opt(2, "pushes a replica may have unacknowledged before it waits")
    prefetch: Optional[bool] = opt(None, "overlap the next fetch with the compute; default: only "
                                         "when each replica has a whole CPU or a GPU of its own")
    transport: str = opt("auto", "auto: shared memory between a replica and shards on its machine, "
                                 "Ray calls otherwise; ray; shm: shared memory or fail")
    pipeline: Optional[bool] = opt(None, "shared memory: compute the next step on the newest "
                                         "parameters without waiting for the own push's result")
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
    fail_on_rejected: float = opt(0.5, "end a run as failed when more than this fraction of its pushes "
                                       "were rejected (0..1; 1: never)")
    divergence_factor: float = opt(4.0, "end as diverged when the test loss exceeds this many times its "
                                        "best (0: never); a NaN or Inf training loss always does")
    inject_faults: Optional[str] = opt(None, "kill actors on purpose (tests, demos): ROLE:WHICH@WHEN,... "
                                             "e.g. replica:1@30s,shard:0@50%,replica:random@200")
    inject_delay: Optional[str] = opt(None, "replicas sleep this long after each compute (experiments, "
                                            "stragglers): e.g. straggler:mean=0.005,jitter=0.1,p=0.1,factor=5 "
                                            "(seconds; see docs/simulation.md)")
    dry_run: bool = opt(False, "check a set-up: 3 steps per replica, then evaluate on 500 test samples")


FIELDS = {f.name: f for f in fields(TrainConfig)}

# Bounds on what a user may ask for, each with its reason in the message that enforces it.
MAX_ACTORS = 4096            # replicas, and shards: each is a Ray actor (the plan and cluster are checked later)
MAX_THREADS = 1024           # torch threads per replica: more than any node has cores
MAX_SEED = 2**32 - 1         # numpy's and torch's seeding take 0..2**32-1
LR_RANGE = (1e-30, 1e6)      # far outside any optimizer's useful range on both sides: a typo
TIMEOUT_RANGE_S = (1.0, 86400.0)  # below 1 s no reply comes back; above a day is surely a mistake
MIN_CPUS = 1e-4              # Ray's resource granularity: less is 0, which no scheduler accounts for
_MAX_INT = 2**63 - 1         # what msgpack, torch and Ray carry as an integer

_POSITIVE_INTS = ("replicas", "shards", "epochs", "batch_size", "n_fetch", "n_push", "max_inflight",
                  "keep_checkpoints")
TRANSPORTS = ("auto", "ray", "shm")
LOCAL_OPTIMIZERS = ("sgd", "adam")
BUDGETS = ("replica", "job")
_CHOICES = {"device": DEVICES, "placement": ("spread", "pack"), "transport": TRANSPORTS,
            "local_optimizer": LOCAL_OPTIMIZERS, "budget": BUDGETS}
# names users bring from other tools: shown as a did-you-mean for an unknown key
_ALIASES = {"learning_rate": "lr", "num_replicas": "replicas", "workers": "replicas",
            "num_workers": "replicas", "num_shards": "shards", "bs": "batch_size", "batch": "batch_size"}
_BAD_CHARS = ("Cc", "Cs", "Zl", "Zp")  # control characters, lone surrogates, line breaks


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
        name = check_key(key, source)
        checked[name] = _coerce(name, value, source)
    return checked


def check_key(key: Any, source: str) -> str:
    """The field a YAML key or flag names ('batch-size' -> 'batch_size'); an unknown one is a
    UserError with a did-you-mean."""
    name = str(key).replace("-", "_")
    if name in FIELDS:
        return name
    bare = name.strip("_").lower()
    close = [bare] if bare in FIELDS else [_ALIASES[bare]] if bare in _ALIASES else \
        difflib.get_close_matches(bare, FIELDS, n=1, cutoff=0.6)
    if close:
        raise UserError(f"{source}: unknown key {_show(str(key))}; did you mean '{close[0]}'?")
    raise UserError(f"{source}: unknown key {_show(str(key))}; known keys: {', '.join(FIELDS)}")


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
        raise UserError(f"{source}: {name} is {_show(value)} ({type(value).__name__}); expected {kind.__name__}")
    if kind is float and isinstance(value, int) and abs(value) > sys.float_info.max:
        raise UserError(f"{source}: {name} is a {_digits(value)}-digit number, too large for a float: "
                        f"give {_flag(name)} a number such as {FIELDS[name].default or 1.0}")
    if kind is str and any(unicodedata.category(ch) in _BAD_CHARS for ch in value):
        raise UserError(f"{source}: {name} is {_show(value)}: it holds a control character or line "
                        "break; give it as one line of plain text")
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
    _check_counts(c)
    _check_floats(c)
    if c.metrics_port is not None and not 1 <= c.metrics_port <= 65535:
        raise UserError(f"metrics_port is {c.metrics_port}: set --metrics-port to a port in 1..65535")
    if c.metrics_port is not None and c.address:
        raise UserError("metrics_port applies to a local Ray only: on a cluster set it with "
                        "`ray start --metrics-export-port PORT` and drop --metrics-port")
    for role in ("replica", "shard"):
        spec = getattr(c, f"{role}_resources")
        asked = parse_resources(spec, f"{role}_resources") if spec is not None else {}
        if "CPU" in asked and getattr(c, f"{role}_cpus") is not None:
            raise UserError(f"{role}_cpus and CPU= in {role}_resources both set a {role}'s CPUs: "
                            f"give one of --{role}-cpus or --{role}-resources CPU=...")
        if "CPU" in asked and asked["CPU"] < MIN_CPUS:
            raise UserError(f"{role}_resources asks for CPU={asked['CPU']:g}: {_NO_CPU[role]}; give "
                            f"CPU= a positive share such as 0.5, or leave CPU= out for a share of the cluster")
    parse_cadence(c.checkpoint_every)
    parse_faults(c.inject_faults, c.replicas, c.shards)
    if c.inject_delay is not None:
        from ps.common.delays import parse_delay
        parse_delay(c.inject_delay, "inject_delay")
    for name, allowed in _CHOICES.items():
        if getattr(c, name) not in allowed:
            raise UserError(f"{name} is {_show(getattr(c, name))}: choose one of {', '.join(allowed)}")


_NO_CPU = {"replica": "a replica computes gradients and would get no CPU time Ray accounts for "
                      "(all of them could land on one node, or on a head started with --num-cpus=0)",
           "shard": "a shard runs the optimizer and would get no CPU time Ray accounts for "
                    "(all of them could land on one node, or on a head started with --num-cpus=0)"}


def _check_counts(c: TrainConfig) -> None:
    """The integer fields: at least 1 (or 0), and bounded where a number creates actors or threads."""
    if not 0 <= c.seed <= MAX_SEED:
        raise UserError(f"seed is {_show(c.seed)}: set --seed to a whole number in 0..{MAX_SEED} (numpy "
                        "and torch take seeds of 32 bits)")
    for name in _POSITIVE_INTS:
        value = getattr(c, name)
        if value < 1:
            raise UserError(f"{name} is {_show(value)}: set {_flag(name)} to 1 or more")
    for name in ("replicas", "shards"):
        if getattr(c, name) > MAX_ACTORS:
            raise UserError(f"{name} is {getattr(c, name)}: at most {MAX_ACTORS} (each is a Ray actor); "
                            f"set {_flag(name)} to 1..{MAX_ACTORS}")
    if c.local_steps is not None and c.local_steps < 1:
        raise UserError(f"local_steps is {c.local_steps}: set --local-steps to 1 or more, or leave it "
                        "out for Downpour's pushes of gradients")
    if c.local_steps is not None and (c.n_fetch, c.n_push) not in ((1, 1), (c.local_steps,) * 2):
        raise UserError(f"local_steps {c.local_steps} sets n_fetch and n_push, but they are given as "
                        f"{c.n_fetch} and {c.n_push}: drop --n-fetch and --n-push")
    if c.steps is not None and c.steps < 1:
        raise UserError(f"steps is {c.steps}: set --steps to 1 or more, or leave it out to use --epochs")
    if c.threads is not None and not 1 <= c.threads <= MAX_THREADS:
        raise UserError(f"threads is {c.threads}: set --threads to 1..{MAX_THREADS} (torch threads per "
                        "replica), or leave it out for one per CPU of the replica")
    for name in ("max_replica_restarts", "max_shard_restarts"):
        if getattr(c, name) < 0:
            raise UserError(f"{name} is {_show(getattr(c, name))}: set {_flag(name)} to 0 or more")
    for f in fields(TrainConfig):  # what is left unbounded still has to fit the 64 bits it travels in
        value = getattr(c, f.name)
        if isinstance(value, int) and abs(value) > _MAX_INT:
            raise UserError(f"{f.name} is {_show(value)}: set {_flag(f.name)} to a whole number below 2**63")


def _check_floats(c: TrainConfig) -> None:
    """The float fields: finite, normal (no subnormal 1e-320), each in its range."""
    floats = [(f.name, getattr(c, f.name)) for f in fields(TrainConfig) if isinstance(getattr(c, f.name), float)]
    for name, value in floats:
        if not math.isfinite(value):
            raise UserError(f"{name} is {value}: set {_flag(name)} to a finite number")
    for name in ("lr", "local_lr"):
        value = getattr(c, name)
        low, high = LR_RANGE
        if value is None or (name == "local_lr" and value == 0):
            continue  # local_lr 0: replicas take no step of their own between fetches
        if not low <= value <= high:
            zero = " (or 0 for no local step)" if name == "local_lr" else ""
            why = ("a learning rate that large is far outside any optimizer's range, surely a typo"
                   if value > high else "a learning rate is positive" if value <= 0 else
                   "a learning rate that small leaves float32 weights unchanged" + (
                       f" ({value!r} is even a subnormal float, below {sys.float_info.min:.3g})"
                       if value < sys.float_info.min else ""))
            raise UserError(f"{name} is {value!r}: set {_flag(name)} to {low:g}..{high:g}{zero}; {why}")
    low, high = TIMEOUT_RANGE_S
    if not low <= c.timeout_s <= high:
        why = "a reply cannot come back that fast" if c.timeout_s < low else "a wait of over a day is a mistake"
        raise UserError(f"timeout_s is {c.timeout_s:g}: set --timeout-s to {low:g}..{high:g} seconds; {why}")
    if c.eval_every < 0:
        raise UserError(f"eval_every is {c.eval_every:g}: set --eval-every to 0 or more")
    for role in ("replica", "shard"):
        value = getattr(c, f"{role}_cpus")
        if value is not None and value < MIN_CPUS:
            raise UserError(f"{role}_cpus is {value:g}: {_NO_CPU[role]}; set --{role}-cpus to a positive "
                            f"share such as 0.5 (at least {MIN_CPUS:g}), or leave it out for a share of the cluster")
    if c.clip_norm is not None and not c.clip_norm > 0:
        raise UserError(f"clip_norm is {c.clip_norm}: set --clip-norm to a number above 0, or leave it out")
    if not (c.divergence_factor == 0 or c.divergence_factor > 1):
        raise UserError(f"divergence_factor is {c.divergence_factor}: set --divergence-factor above 1, "
                        "or 0 to turn the test-loss alarm off")
    if not 0 <= c.fail_on_rejected <= 1:
        raise UserError(f"fail_on_rejected is {c.fail_on_rejected:g}: set --fail-on-rejected to a fraction "
                        "in 0..1 (1: never fail for rejected pushes)")
    for name, value in floats:  # subnormal: precision lost, and slow arithmetic on most CPUs
        if value != 0 and abs(value) < sys.float_info.min:
            raise UserError(f"{name} is {value!r}: below the smallest normal float ({sys.float_info.min:.3g}), "
                            f"where arithmetic loses its precision; set {_flag(name)} to a larger number")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _digits(n: int) -> int:
    """Decimal digits of a huge int without str(), which refuses past 4300 digits."""
    return max(1, math.floor(abs(n).bit_length() * math.log10(2)) + 1)


def _show(value: Any, limit: int = 60) -> str:
    """A value for a message: repr (so line breaks show as \\n), cut short when long."""
    text = f"a {_digits(value)}-digit number" if isinstance(value, int) and abs(value) > 10**limit \
        else repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}...({len(text)} characters)"


def replica_settings(c: TrainConfig, rounds: bool = False,
                     ssp_bound: Optional[int] = None) -> ReplicaSettings:
    """What a model replica needs of the job's configuration, and nothing else; `rounds` and
    `ssp_bound` from its parsed consistency mode (ps.server.consistency, above this layer)."""
    return ReplicaSettings(
        model=c.model, seed=c.seed, replicas=c.replicas, batch_size=c.batch_size,
        total_steps=c.steps, epochs=c.epochs, n_fetch=c.n_fetch, n_push=c.n_push,
        max_inflight=c.max_inflight,
        local_lr=c.lr if c.local_lr is None else c.local_lr,
        prefetch=bool(c.prefetch), device=c.device, timeout_s=c.timeout_s, event_log=c.event_log,
        transport=c.transport, pipeline=bool(c.pipeline), rounds=rounds,
        ssp_bound=ssp_bound, local_steps=c.local_steps,
        local_optimizer=c.local_optimizer, inject_delay=c.inject_delay)


def to_dict(c: TrainConfig) -> dict:
    return dataclasses.asdict(c)
