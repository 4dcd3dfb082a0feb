"""The package layers import only downward (docs/design.md, "Layers"): checked on the source."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("ps", "replicas", "sharding")
# package -> what it may import of ours (itself always)
ALLOWED = {
    "ps.common": set(),
    "sharding": {"ps.common"},
    "ps.server": {"ps.common"},
    "ps.obs": {"ps.common"},
    "replicas": {"ps.common", "sharding"},
    "ps.driver": {"ps.common", "ps.server", "ps.obs", "replicas", "sharding"},
    "ps.sim": {"ps.common", "ps.server", "ps.obs", "ps.driver", "replicas", "sharding"},
    "ps.cli": {"ps.common", "ps.server", "ps.obs", "ps.driver", "ps.sim", "replicas", "sharding"},
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "ps" and len(parts) > 1 else parts[0]


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in OURS and m != "ps"}


@pytest.mark.parametrize("layer", ALLOWED)
def test_each_layer_imports_only_the_layers_below_it(layer):
    folder = ROOT.joinpath(*layer.split("."))
    bad = {}
    for path in sorted(folder.rglob("*.py")):
        wrong = {m for m in imports_of(path)
                 if layer_of(m) not in ALLOWED[layer] | {layer} and layer_of(m) in ALLOWED}
        if wrong:
            bad[str(path.relative_to(ROOT))] = sorted(wrong)
    assert not bad, f"{layer} may import only {sorted(ALLOWED[layer])}: {bad}"


def test_every_module_belongs_to_a_layer():
    modules = [p for top in OURS for p in (ROOT / top).rglob("*.py")]
    loose = [str(p.relative_to(ROOT)) for p in modules
             if p.parent == ROOT / "ps" and p.name != "__init__.py"]
    assert not loose, f"modules directly in ps/, outside every layer: {loose}"
