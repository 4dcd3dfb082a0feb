"""deploy/: the cluster manifests parse and have the shape every cluster needs, every `downpour`
command in them and in deploy/README.md is one the CLI accepts, the example job is a valid config,
and the image installs the project through setup.cfg. No Ray is started; no Kubernetes or cloud."""

import configparser
import contextlib
import importlib.util
import io
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from ps.cli import build_parser
from ps.common import config as cfg

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
YAML_FILES = sorted(DEPLOY.glob("*.yaml"))
LAUNCHER_FILES = ("cluster-aws.yaml", "cluster-local.yaml")
KUBERAY_FILES = ("kuberay-raycluster.yaml", "kuberay-rayjob.yaml")
METRICS_PORT = "8080"


def load(name: str) -> dict:
    (doc,) = yaml.safe_load_all((DEPLOY / name).read_text())
    return doc


# --- finding the `downpour` commands --------------------------------------------------------------

PLACEHOLDER = re.compile(r"<[A-Za-z][A-Za-z0-9_.:/-]*>")  # <JOB_ID>, <HEAD-IP>, <YOUR-REGISTRY>
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")  # RAY_AUTH_MODE=token before a command
COMMAND_LIKE = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*downpour\s")


def commands_in(text: str) -> list[list[str]]:
    """The argv of every `downpour ...` command in shell text: backslash continuations joined,
    placeholders made plain words, env-var prefixes dropped, cut at `&&`, `;`, `|` and redirections,
    and found inside quoted arguments too (`ray exec CLUSTER 'downpour top ...'`)."""
    found = []
    for line in text.replace("\\\n", " ").splitlines():
        found += _commands_in_line(PLACEHOLDER.sub("PLACEHOLDER", line))
    return found


def _commands_in_line(line: str) -> list[list[str]]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # prose with an apostrophe: not a command line
        return []
    segments, current = [], []
    # operators and redirections end a command; `(` starts one: $(downpour ...)
    for token in tokens:
        if token and all(ch in lexer.punctuation_chars for ch in token):
            segments.append(current)
            current = []
        else:
            current.append(token)
    segments.append(current)
    found = []
    for words in segments:
        while words and ENV_ASSIGNMENT.match(words[0]):
            words = words[1:]
        if len(words) >= 2 and (words[0] == "downpour" or words[0].endswith("/downpour")):
            # (a bare `downpour` is a name, as in `cluster_name: downpour`)
            found.append(["downpour", *words[1:]])
            continue
        for word in words:  # a command passed as one argument
            if COMMAND_LIKE.match(word):
                found += _commands_in_line(word)
    return found


def strings_in(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in strings_in(value)]
    if isinstance(node, list):
        return [s for value in node for s in strings_in(value)]
    return []


def yaml_commands(path: Path) -> list[list[str]]:
    """Commands in the YAML's values (entrypoint, start commands) and in its comment lines that
    begin with one (`# downpour status ...`)."""
    found = []
    for doc in yaml.safe_load_all(path.read_text()):
        for text in strings_in(doc):
            found += commands_in(text)
    for line in path.read_text().splitlines():
        comment = line.strip()
        if comment.startswith("#") and COMMAND_LIKE.match(comment.lstrip("#").strip()):
            found += commands_in(comment.lstrip("#").strip())
    return found


def readme_commands() -> list[list[str]]:
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", (DEPLOY / "README.md").read_text(), re.M | re.S)
    return [argv for block in blocks for argv in commands_in(block)]


def all_commands() -> list[tuple[str, list[str]]]:
    found = [("README.md", argv) for argv in readme_commands()]
    for path in YAML_FILES:
        found += [(path.name, argv) for argv in yaml_commands(path)]
    return found


COMMANDS = all_commands()


def test_the_command_finder_handles_the_shell_forms_used():
    text = ("export RAY_AUTH_MODE=token\n"
            "RAY_AUTH_MODE=token downpour status <JOB_ID> --address http://<HEAD-IP>:8265\n"
            "downpour train --address auto \\\n    --replicas 2  # two of them\n"
            "ray exec deploy/cluster-aws.yaml 'downpour top --address auto --frames 1'\n"
            "JOB=$(downpour submit --replicas 2 --address http://h:8265) && echo $JOB\n"
            "cd /app && downpour plan --shards 4 > plan.txt\n"
            "Use `ray start`; it's where downpour train joins.\n")
    assert commands_in("downpour") == []  # cluster_name: downpour
    assert commands_in(text) == [
        ["downpour", "status", "PLACEHOLDER", "--address", "http://PLACEHOLDER:8265"],
        ["downpour", "train", "--address", "auto", "--replicas", "2"],
        ["downpour", "top", "--address", "auto", "--frames", "1"],
        ["downpour", "submit", "--replicas", "2", "--address", "http://h:8265"],
        ["downpour", "plan", "--shards", "4"],
    ]


def test_the_deploy_files_use_every_cluster_command_and_flag():
    """Guards the parser test below against finding nothing: the docs show the whole job cycle."""
    assert len(COMMANDS) >= 20
    used = {argv[1] for _, argv in COMMANDS}
    assert {"train", "submit", "status", "logs", "stop", "scale"} <= used, used
    flags = {word for _, argv in COMMANDS for word in argv if word.startswith("--")}
    assert {"--shard-resources", "--replica-resources", "--placement", "--address",
            "--config", "--follow", "--replicas"} <= flags, flags
    assert any(source == "kuberay-rayjob.yaml" for source, _ in COMMANDS)


@pytest.mark.parametrize("source, argv", COMMANDS,
                         ids=[f"{source}: {shlex.join(argv)[:90]}" for source, argv in COMMANDS])
def test_every_downpour_command_in_deploy_is_accepted_by_the_cli(source, argv):
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{source}: the CLI rejects `{shlex.join(argv)}`:\n{stderr.getvalue()}")
    if args.command in ("train", "submit"):  # the values too, merged as the CLI does (no Ray)
        values = {}
        if args.config:  # deploy/job.yaml, or a copy of it on a node or in the image
            assert args.config.endswith("deploy/job.yaml"), args.config
            values = cfg.load_yaml(str(DEPLOY / "job.yaml"))
        flags = {k: v for k, v in vars(args).items() if k in cfg.FIELDS}
        if args.command == "submit":
            flags.pop("address")  # the job API's URL; the job itself joins with --address auto
        cfg.from_mapping({**values, **flags}, f"{source}: {shlex.join(argv)}")


# --- the example job, the image -------------------------------------------------------------------

def test_the_example_job_is_a_valid_downpour_config():
    values = yaml.safe_load((DEPLOY / "job.yaml").read_text())
    config = cfg.from_mapping(values, "deploy/job.yaml")
    assert config.model and config.replicas >= 1 and config.shards >= 1
    assert config.address is None  # where to run is each deployment's flag, not the job's


def install_requires() -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    lines = [line.split("#")[0].strip()
             for line in parser["options"]["install_requires"].splitlines()]
    return [re.match(r"[A-Za-z0-9_.-]+", line).group(0) for line in lines if line]


def test_the_image_installs_the_project_through_setup_cfg():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    instructions = [line for line in dockerfile.replace("\\\n", " ").splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    installs = [line for line in instructions if "pip install" in line]
    assert any("'.[plot,tensorboard]'" in line for line in installs), installs
    # setup.cfg is the only list of requirements: none is pinned again here ...
    names = install_requires()
    assert {"ray", "torch", "numpy", "msgpack", "pyyaml"} <= {n.lower() for n in names}, names
    for name in names:
        pinned = re.compile(rf"(?<![\w.-]){re.escape(name)}(\[[^\]]*\])?\s*(==|>=|<=|~=|!=|<|>|@)",
                            re.I)
        assert not any(pinned.search(line) for line in instructions), f"{name} pinned again"
    # ... and torch alone comes first, from the index that picks its CPU or CUDA build.
    assert any(re.search(r"--index-url\s+\"?\$\{?TORCH_INDEX_URL\}?\"?\s+torch\s*$", line)
               for line in installs), installs
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu\d+$",
                     dockerfile, re.M)
    assert "https://download.pytorch.org/whl/cpu" in dockerfile  # the CPU index is documented
    assert re.search(r"^FROM \$\{RAY_IMAGE\}$", dockerfile, re.M)
    assert re.search(r"^ARG RAY_IMAGE=rayproject/ray:2\.60\.0-py311(-gpu)?$", dockerfile, re.M)
    for path in ("setup.cfg", "pyproject.toml", "README.md", "ps", "replicas", "sharding",
                 "deploy/job.yaml"):  # what `pip install .` and --config need, and it exists
        assert (ROOT / path).exists(), path
        assert re.search(rf"^COPY .*\b{re.escape(path)}\b", dockerfile, re.M), path


def test_one_ray_version_everywhere():
    versions = set()
    for path in [*YAML_FILES, DEPLOY / "Dockerfile", DEPLOY / "README.md"]:
        text = path.read_text()
        versions |= set(re.findall(r"rayproject/ray:(\d+\.\d+\.\d+)", text))
        versions |= set(re.findall(r"rayVersion: \"(\d+\.\d+\.\d+)\"", text))
        versions |= set(re.findall(r"ray\[default\]==(\d+\.\d+\.\d+)", text))
        versions |= set(re.findall(r"ray\.__version__ == '(\d+\.\d+\.\d+)'", text))
    assert versions == {"2.60.0"}


# --- Ray's cluster launcher -----------------------------------------------------------------------

def ray_launcher_schema() -> dict:
    """The schema `ray up` checks a cluster file against, from the installed Ray (not imported)."""
    (package,) = importlib.util.find_spec("ray").submodule_search_locations
    return json.loads((Path(package) / "autoscaler" / "ray-schema.json").read_text())


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_cluster_launcher_files_have_the_launchers_keys_and_match_rays_schema(name):
    cluster = load(name)
    for key in ("cluster_name", "max_workers", "provider", "auth", "setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands", "file_mounts"):
        assert key in cluster, f"{name}: no {key}"
    jsonschema.validate(cluster, ray_launcher_schema())
    # every node: token auth, the metrics port; and the token itself copied to every node
    for command in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]:
        if "ray start" in command:
            assert "RAY_AUTH_MODE=token" in command, command
            assert f"--metrics-export-port={METRICS_PORT}" in command, command
    assert cluster["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


def test_the_cloud_cluster_has_a_head_ps_nodes_and_gpu_replica_nodes():
    cluster = load("cluster-aws.yaml")
    assert cluster["provider"]["type"] == "aws"
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    assert types[cluster["head_node_type"]]["resources"].get("CPU") == 0
    workers = [t for name, t in types.items() if name != cluster["head_node_type"]]
    ps_nodes = [t for t in workers if t["resources"].get("ps", 0) >= 1]
    gpu_nodes = [t for t in workers if t["resources"].get("replica", 0) >= 1]
    assert ps_nodes and all("GPU" not in t["resources"] for t in ps_nodes)
    assert gpu_nodes
    assert all(t["resources"].get("GPU", 0) >= t["resources"]["replica"] for t in gpu_nodes)
    assert all(t["min_workers"] >= 1 and "InstanceType" in t["node_config"] for t in workers)
    assert sum(t["max_workers"] for t in workers) <= cluster["max_workers"]


def test_the_on_premise_cluster_lists_its_machines_and_labels_them():
    cluster = load("cluster-local.yaml")
    provider = cluster["provider"]
    assert provider["type"] == "local" and provider["head_ip"] and len(provider["worker_ips"]) >= 2
    assert cluster["auth"]["ssh_user"]
    # Ray's local provider refuses node types: it makes one itself, so the start command labels
    assert "available_node_types" not in cluster and "head_node_type" not in cluster
    (start,) = [c for c in cluster["worker_start_ray_commands"] if "ray start" in c]
    assert "nvidia-smi" in start and "--resources" in start
    assert '\\"replica\\"' in start and '"ps"' in start
    (head,) = [c for c in cluster["head_start_ray_commands"] if "ray start" in c]
    assert "--num-cpus=0" in head
    installs = " ".join(cluster["setup_commands"])
    assert "ray[default]==2.60.0" in installs and "downpour[plot,tensorboard]" in installs


# --- KubeRay --------------------------------------------------------------------------------------

def custom_resources(group: dict) -> dict:
    """rayStartParams.resources, as KubeRay wants it: a JSON object in a JSON string."""
    return json.loads(json.loads(group["rayStartParams"]["resources"]))


def gpus(group: dict) -> int:
    return sum(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
               for c in group["template"]["spec"]["containers"])


def check_ray_cluster_spec(spec: dict, name: str) -> None:
    assert spec["rayVersion"] == "2.60.0"
    head, groups = spec["headGroupSpec"], spec["workerGroupSpecs"]
    for group in [head, *groups]:  # KubeRay's rayStartParams is a map of strings
        params = group["rayStartParams"]
        assert all(isinstance(v, str) for v in params.values()), f"{name}: {params}"
        assert params.get("metrics-export-port") == METRICS_PORT, f"{name}: {params}"
        assert group["template"]["spec"]["containers"][0]["image"]
    assert head["rayStartParams"].get("num-cpus") == "0"
    ps_groups = [g for g in groups if "ps" in custom_resources(g)]
    replica_groups = [g for g in groups if "replica" in custom_resources(g)]
    assert len(ps_groups) == 1 and len(replica_groups) == 1, f"{name}: {groups}"
    assert gpus(ps_groups[0]) == 0
    assert gpus(replica_groups[0]) >= custom_resources(replica_groups[0])["replica"] >= 1
    for group in groups:
        assert group["groupName"]
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert spec["authOptions"] == {"mode": "token"}


def test_the_kuberay_raycluster_has_a_ps_group_and_a_gpu_replica_group():
    cluster = load("kuberay-raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert cluster["metadata"]["name"]
    check_ray_cluster_spec(cluster["spec"], "kuberay-raycluster.yaml")


def test_the_kuberay_rayjob_runs_downpour_on_a_cluster_of_the_same_shape():
    job = load("kuberay-rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert commands_in(spec["entrypoint"])[0][:2] == ["downpour", "train"]
    assert "--address auto" in spec["entrypoint"]
    check_ray_cluster_spec(spec["rayClusterSpec"], "kuberay-rayjob.yaml")
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["submitterPodTemplate"]["spec"]["containers"][0]["image"]


@pytest.mark.parametrize("path", YAML_FILES, ids=[p.name for p in YAML_FILES])
def test_every_yaml_file_parses(path):
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert len(docs) == 1 and isinstance(docs[0], dict)
    if path.name in KUBERAY_FILES:
        assert {"apiVersion", "kind", "metadata", "spec"} <= set(docs[0])
    elif path.name in LAUNCHER_FILES:
        assert {"cluster_name", "provider"} <= set(docs[0])
