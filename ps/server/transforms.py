"""Gradient transforms: staleness compensation applied to a push's gradient itself, beside the lr rule.

The lr rule scales a push's step by one number; a transform rewrites the gradient element by
element from what the shard knows about the push: the parameters now (`w_now`), the parameters the
replica fetched (`w_bak`, kept by the shard when `needs_backup`) and the staleness (`ctx`).

A transform keeps its statistics (mean squares, average parameter change) across pushes; they are
per shard, shared by all replicas, and `export_state`/`load_state` carry them through checkpoints
as numpy arrays ((size,) arrays and 0-d ones, like the optimizer state). `apply` advances them, so
a shard that undoes a push (the overflow guard) and wants the transform undone too restores
`export_state()` taken before the push.

Spec text (`--gradient-transform`): `none`, `dcasgd:lambda=L[,adaptive=1,m=M,eps=E]`,
`gap_aware[:beta=B,eps=E]` or a plug-in `package.module:Factory[:key=value,...]`.
"""

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from ps.common.errors import UserError
from ps.common.specs import is_plugin_path, load_plugin, parse_spec

FIELD = "gradient_transform"


@dataclass(frozen=True)
class TransformContext:
    tau: int        # staleness of this push (shard version now - fetched version); -1 if undefined
    replica: int
    version: int    # shard version before this push


class GradientTransform:
    """Base class. `apply` returns the transformed float32 gradient: a new array, a buffer the
    transform owns (valid until its next `apply`), or `grad` itself when there is nothing to do;
    it never writes to `grad`, `w_now` or `w_bak`. `w_bak` None (no backup was recorded for this
    replica): the gradient comes back unchanged."""
    name: str = "transform"
    needs_backup: bool = False  # True: the shard keeps w_bak[replica] = the values it last fetched

    def apply(self, grad: np.ndarray, w_now: np.ndarray, w_bak: Optional[np.ndarray],
              ctx: TransformContext) -> np.ndarray:
        raise NotImplementedError

    def state_bytes(self) -> int:
        """Bytes of the arrays the transform holds itself (state and scratch buffers)."""
        return 0

    def export_state(self) -> dict:
        return {}

    def load_state(self, d: dict) -> None:
        if d:
            raise ValueError(f"{self.name} holds no state, got {sorted(d)}")


# ---- DC-ASGD ---------------------------------------------------------------------------------------
class DCASGD(GradientTransform):
    """Delay compensation, Zheng et al. 2017 ("Asynchronous SGD with Delay Compensation"): the
    stale gradient g is corrected by a first-order Taylor term, the Hessian approximated by
    lambda * g*g (elementwise):

        g' = g + lambda_t * g*g*(w_now - w_bak)

    Constant form (DC-ASGD-c): lambda_t = lambda.
    Adaptive form (DC-ASGD-a, adaptive=1): per element, on every apply,
        ms <- m*ms + (1-m)*g*g          (ms starts at 0; updated with THIS g before it is used)
        lambda_t = lambda / sqrt(ms + eps)
    Updating ms first bounds the correction: ms >= (1-m)*g*g, so |lambda_t*g*g| <=
    lambda*|g|/sqrt(1-m), even on the first push (with the old ms, 0, it would be
    lambda*g*g/sqrt(eps)). ms is the shard's, over all replicas' pushes, and it advances on every
    apply, also when w_bak is None (it describes the gradients, not one replica's gap).

    Float32 throughout, in this order: ((w_now - w_bak) * g) * g, times lambda_t, plus g.
    lambda=0 returns `grad` itself (bitwise g, also where the correction would be inf*0).
    """
    name = "dcasgd"
    needs_backup = True

    def __init__(self, size: int, lam: float, adaptive: bool = False, m: float = 0.95,
                 eps: float = 1e-7):
        self.size, self.lam, self.adaptive = size, np.float32(lam), adaptive
        self.m, self.eps = np.float32(m), np.float32(eps)
        self._out = np.empty(size, np.float32)
        self._tmp = np.empty(size, np.float32) if adaptive else None
        self.ms = np.zeros(size, np.float32) if adaptive else None

    def apply(self, grad, w_now, w_bak, ctx):
        _check_shapes(self.size, grad, w_now, w_bak)
        # a finite gradient whose square overflows gives inf here, as the optimizer step would:
        # the shard's overflow guard rejects the push, so no warning
        with np.errstate(over="ignore", invalid="ignore"):
            return self._apply(grad, w_now, w_bak)

    def _apply(self, grad, w_now, w_bak):
        if self.adaptive:
            self._update_mean_square(grad)
        if w_bak is None or self.lam == 0:
            return grad
        out = np.subtract(w_now, w_bak, out=self._out)
        out *= grad
        out *= grad
        if self.adaptive:  # lambda / sqrt(ms + eps), elementwise
            lam_t = np.sqrt(np.add(self.ms, self.eps, out=self._tmp), out=self._tmp)
            np.divide(self.lam, lam_t, out=lam_t)
            out *= lam_t
        else:
            out *= self.lam
        out += grad
        return out

    def _update_mean_square(self, grad: np.ndarray) -> None:
        sq = np.multiply(grad, grad, out=self._tmp)
        sq *= np.float32(1) - self.m
        self.ms *= self.m
        self.ms += sq

    def state_bytes(self) -> int:
        return sum(a.nbytes for a in (self._out, self._tmp, self.ms) if a is not None)

    def export_state(self) -> dict:
        return {"ms": self.ms.copy()} if self.adaptive else {}

    def load_state(self, d: dict) -> None:
        if not self.adaptive:
            return GradientTransform.load_state(self, d)
        self.ms[:] = _array(d, "ms", self.size)


# ---- Gap-Aware -------------------------------------------------------------------------------------
class GapAware(GradientTransform):
    """Gap-Aware, after Barkai, Hakimi, Schuster 2019 ("Gap-Aware Mitigation of Gradient
    Staleness"): each element of a stale gradient is divided by its Gap, how far that parameter
    moved since the replica fetched it, measured in typical single-update steps:

        G = 1 + |w_now - w_bak| / max(C, eps),   g' = g / G     (elementwise, float32)

    What is implemented for C (the paper's own definition could not be checked here; from memory
    it is C = the typical per-update parameter change, estimated with a moving average of the
    update magnitudes the master applied, which the master sees directly): this transform only sees
    what `apply` is given, so it keeps its own copy of the last `w_now` (w_prev) and, when the shard
    version advanced by k >= 1 updates since then, feeds the per-update change |w_now - w_prev| / k
    (an even split of the k updates) into an EMA with factor beta, bias-corrected as Adam's moments
    are (C = ema / (1 - beta**n) after n observations) so that C is an average from the first
    observation on instead of being pulled towards its initial 0. Calls at a version that did not
    advance (a rejected push) leave C alone. Before any change was observed there is no step size to
    measure a gap in and g passes unchanged; so does g when w_bak is None (C and w_prev still
    advance: they describe the shard, not the replica). A zero gap gives G = 1: g bitwise.
    """
    name = "gap_aware"
    needs_backup = True

    def __init__(self, size: int, beta: float = 0.99, eps: float = 1e-12):
        self.size, self.beta, self.eps = size, np.float32(beta), np.float32(eps)
        self.ema = np.zeros(size, np.float32)
        self.w_prev = np.zeros(size, np.float32)
        self.observed = 0          # changes fed into the EMA so far (for the bias correction)
        self.prev_version = -1     # version of w_prev; -1: none yet
        self._out = np.empty(size, np.float32)
        self._tmp = np.empty(size, np.float32)

    def apply(self, grad, w_now, w_bak, ctx):
        _check_shapes(self.size, grad, w_now, w_bak)
        self._observe(w_now, ctx.version)
        if w_bak is None or self.observed == 0:
            return grad
        c = np.divide(self.ema, np.float32(1 - float(self.beta) ** self.observed), out=self._tmp)
        np.maximum(c, self.eps, out=c)
        gap = np.subtract(w_now, w_bak, out=self._out)
        np.abs(gap, out=gap)
        gap /= c
        gap += np.float32(1)
        return np.divide(grad, gap, out=gap)

    def _observe(self, w_now: np.ndarray, version: int) -> None:
        steps = version - self.prev_version
        if self.prev_version >= 0 and steps > 0:
            change = np.subtract(w_now, self.w_prev, out=self._tmp)
            np.abs(change, out=change)
            if steps > 1:
                change /= np.float32(steps)
            self.ema *= self.beta
            change *= np.float32(1) - self.beta
            self.ema += change
            self.observed += 1
        if steps != 0 or self.prev_version < 0:  # same version: the values are the same, no copy
            self.w_prev[:] = w_now
            self.prev_version = version

    def state_bytes(self) -> int:
        return sum(a.nbytes for a in (self.ema, self.w_prev, self._out, self._tmp))

    def export_state(self) -> dict:
        return {"ema": self.ema.copy(), "w_prev": self.w_prev.copy(),
                "observed": np.array(self.observed, np.int64),
                "prev_version": np.array(self.prev_version, np.int64)}

    def load_state(self, d: dict) -> None:
        self.ema[:] = _array(d, "ema", self.size)
        self.w_prev[:] = _array(d, "w_prev", self.size)
        self.observed, self.prev_version = int(d["observed"]), int(d["prev_version"])


# ---- plug-ins --------------------------------------------------------------------------------------
class PluginTransform(GradientTransform):
    """A user's object with `apply` and `needs_backup`; the methods it lacks get the defaults."""

    def __init__(self, name: str, obj: Any):
        self.name, self.obj = name, obj
        self.needs_backup = bool(obj.needs_backup)

    def apply(self, grad, w_now, w_bak, ctx):
        return self.obj.apply(grad, w_now, w_bak, ctx)

    def state_bytes(self) -> int:
        return int(self.obj.state_bytes()) if hasattr(self.obj, "state_bytes") else 0

    def export_state(self) -> dict:
        return dict(self.obj.export_state()) if hasattr(self.obj, "export_state") else {}

    def load_state(self, d: dict) -> None:
        if hasattr(self.obj, "load_state"):
            self.obj.load_state(d)
        else:
            GradientTransform.load_state(self, d)


# ---- building and checking specs -------------------------------------------------------------------
TRANSFORMS = ("none", "dcasgd", "gap_aware")


def make_transform(spec: Optional[str], size: int) -> Optional[GradientTransform]:
    """The transform for a shard slice of `size` floats; None for no spec or 'none'. Bad text is a
    UserError (check_transform also runs it once, at the boundary)."""
    if spec is None or (isinstance(spec, str) and spec.strip() == "none"):
        return None
    name, params = parse_spec(spec, FIELD)
    if name == "dcasgd":
        return DCASGD(size, **_dcasgd_params(params))
    if name == "gap_aware":
        return GapAware(size, **_gap_aware_params(params))
    if name.partition(":")[0] in TRANSFORMS:
        raise UserError(f"{FIELD} '{spec}': parameters are key=value, e.g. dcasgd:lambda=0.04")
    if is_plugin_path(name):
        return _make_plugin(name, params, size)
    raise UserError(f"{FIELD} is '{name}': choose one of {', '.join(TRANSFORMS)} "
                    "or give your own as package.module:Factory")


def check_transform(spec: Optional[str]) -> None:
    """Validate a spec before any actor starts: build it on 4 floats and run it on a few pushes
    (with and without a backup), so a broken plug-in fails here as a UserError."""
    transform = make_transform(spec, 4)
    if transform is not None:
        _smoke_test(transform)


def _dcasgd_params(params: dict) -> dict:
    _only(params, "dcasgd", ("lambda", "adaptive", "m", "eps"))
    if "lambda" not in params:
        raise UserError(f"{FIELD} 'dcasgd' needs lambda: write e.g. dcasgd:lambda=0.04")
    lam, adaptive = params["lambda"], params.get("adaptive", 0.0)
    if lam < 0:
        raise UserError(f"{FIELD} 'dcasgd': lambda={lam} must be >= 0 (0 turns compensation off)")
    if adaptive not in (0.0, 1.0):
        raise UserError(f"{FIELD} 'dcasgd': adaptive={adaptive} must be 0 or 1")
    if not adaptive and ("m" in params or "eps" in params):
        raise UserError(f"{FIELD} 'dcasgd': m and eps belong to the adaptive form: add adaptive=1")
    m, eps = params.get("m", 0.95), params.get("eps", 1e-7)
    _check_unit(m, "dcasgd", "m")
    _check_positive(eps, "dcasgd", "eps")
    return {"lam": lam, "adaptive": bool(adaptive), "m": m, "eps": eps}


def _gap_aware_params(params: dict) -> dict:
    _only(params, "gap_aware", ("beta", "eps"))
    beta, eps = params.get("beta", 0.99), params.get("eps", 1e-12)
    _check_unit(beta, "gap_aware", "beta")
    _check_positive(eps, "gap_aware", "eps")
    return {"beta": beta, "eps": eps}


def _only(params: dict, name: str, allowed: tuple) -> None:
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise UserError(f"{FIELD} '{name}' has no parameter {', '.join(map(repr, unknown))}; "
                        f"allowed: {', '.join(allowed)}")


def _check_unit(value: float, name: str, key: str) -> None:
    if not 0 <= value < 1:
        raise UserError(f"{FIELD} '{name}': {key}={value} is out of range; allowed 0 <= {key} < 1")


def _check_positive(value: float, name: str, key: str) -> None:
    if not value > 0:
        raise UserError(f"{FIELD} '{name}': {key}={value} must be > 0, e.g. {key}=1e-8")


def _make_plugin(path: str, params: dict, size: int) -> GradientTransform:
    factory = load_plugin(path, FIELD)
    if not callable(factory):
        raise UserError(f"{FIELD} '{path}' is not callable; it must be a class or factory "
                        "called as factory(size=..., **params)")
    try:
        obj = factory(size=size, **params)
    except TypeError as exc:
        raise UserError(f"{FIELD} '{path}' cannot be called as factory(size=..., "
                        f"{', '.join(f'{k}=' for k in params) or '**params'}): {exc}") from None
    except Exception as exc:  # a user's factory may raise anything: report it at the boundary
        raise UserError(f"{FIELD} '{path}' failed to build: {exc}") from None
    if isinstance(obj, GradientTransform):
        return obj
    missing = [a for a in ("apply", "needs_backup") if not hasattr(obj, a)]
    if missing or not callable(obj.apply):
        raise UserError(f"{FIELD} '{path}' returned a {type(obj).__name__} without "
                        f"{' and '.join(missing) or 'a callable apply'}; it must have "
                        "apply(grad, w_now, w_bak, ctx) and needs_backup")
    return PluginTransform(path, obj)


def _smoke_test(transform: GradientTransform) -> None:
    rng = np.random.default_rng(0)
    w_bak = rng.standard_normal(4).astype(np.float32)
    for version, tau in enumerate((0, 1, 4)):
        grad = rng.standard_normal(4).astype(np.float32)
        w_now = w_bak + np.float32(0.01) * rng.standard_normal(4).astype(np.float32)
        for bak in (w_bak, None):
            inputs = [a.copy() for a in (grad, w_now, w_bak)]
            try:
                out = transform.apply(grad, w_now, bak, TransformContext(tau, 0, version))
                transform.state_bytes()
                transform.load_state(transform.export_state())
            except Exception as exc:  # a user's plug-in may raise anything
                raise UserError(f"{FIELD} '{transform.name}' failed on a test push (tau={tau}): "
                                f"{exc}") from None
            if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (4,)
                    and np.isfinite(out).all()):
                raise UserError(f"{FIELD} '{transform.name}' returned {_describe(out)} for a "
                                "float32 gradient of 4; it must return a finite float32 array of "
                                "the gradient's shape")
            if not all(np.array_equal(a, b) for a, b in zip(inputs, (grad, w_now, w_bak))):
                raise UserError(f"{FIELD} '{transform.name}' modified its inputs; it must return "
                                "a new array and leave grad, w_now and w_bak as they were")


def _describe(out: Any) -> str:
    if isinstance(out, np.ndarray):
        return f"an array of dtype {out.dtype}, shape {out.shape}"
    return f"a {type(out).__name__}"


def _check_shapes(size: int, grad, w_now, w_bak) -> None:
    for label, a in (("grad", grad), ("w_now", w_now), ("w_bak", w_bak)):
        if a is not None and a.shape != (size,):
            raise ValueError(f"{label} has shape {a.shape}, this transform was built for ({size},)")


def _array(d: dict, key: str, size: int) -> np.ndarray:
    a = np.asarray(d[key], dtype=np.float32)
    if a.shape != (size,):
        raise ValueError(f"transform state '{key}' has shape {a.shape}, expected ({size},)")
    return a

