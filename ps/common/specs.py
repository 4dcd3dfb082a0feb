"""Parse `name:key=value,...` specs and import `package.module:name` plug-ins, for rules, optimizers, models."""

import importlib
import math
from typing import Any

from ps.common.errors import UserError


def parse_spec(spec: str, field: str) -> tuple[str, dict[str, float]]:
    """Split 'exponential:gamma=0.9,alpha=2' into ('exponential', {'gamma': 0.9, 'alpha': 2.0}).

    Parameters follow the last colon; a plug-in 'pkg.mod:func' (no '=' after its colon) is a bare
    name, and 'pkg.mod:func:beta=0.5' is that plug-in with a parameter.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"{field} is empty: give a name such as 'constant'")
    spec = spec.strip()
    if not spec.isprintable():  # a line break or control character: messages quoting it stay one line
        raise UserError(f"{field} {spec!r} holds a control character or line break: give it on one line")
    name, sep, rest = spec.rpartition(":")
    if not sep or "=" not in rest:
        return spec, {}
    params = {}
    for item in rest.split(","):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise UserError(f"{field} {spec!r}: {item!r} is not key=value; write e.g. {name}:gamma=0.9")
        params[key] = _number(value.strip(), f"{field} {spec!r}: {key}")
    return name, params


def _number(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"{where}={text!r} must be a finite number")
    return value


def is_plugin_path(name: str) -> bool:
    module, sep, attr = name.partition(":")
    return bool(sep) and bool(module) and attr.isidentifier()


def load_plugin(path: str, field: str) -> Any:
    """Import 'package.module:name' and return the attribute; a missing module or name is a UserError."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"{field} '{path}': cannot import module '{module_name}' ({exc}); "
                        "make it importable (installed, or on PYTHONPATH)") from None
    if not hasattr(module, attr):
        raise UserError(f"{field} '{path}': module '{module_name}' has no attribute '{attr}'")
    return getattr(module, attr)
