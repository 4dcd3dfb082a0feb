"""Gradient transforms: DC-ASGD (constant and adaptive) against hand and numpy references, Gap-Aware's
gap, inputs left alone, state round trips, plug-ins and bad specs."""

import sys
import textwrap

import numpy as np
import pytest

from ps.common.errors import UserError
from ps.server.transforms import (
    DCASGD,
    GapAware,
    GradientTransform,
    TransformContext,
    check_transform,
    make_transform,
)

SIZE = 64
SPECS = ["dcasgd:lambda=0.5", "dcasgd:lambda=2,adaptive=1", "dcasgd:lambda=1,adaptive=1,m=0.5,eps=1e-3",
         "gap_aware", "gap_aware:beta=0.5,eps=1e-6"]


def f32(*values):
    return np.array(values, np.float32)


def ctx(version=0, tau=1, replica=0):
    return TransformContext(tau=tau, replica=replica, version=version)


def pushes(seed=0, n=8, size=SIZE):
    """(grad, w_now, w_bak, ctx) for n pushes on a slowly moving shard, w_bak a few versions old."""
    rng = np.random.default_rng(seed)
    history = [rng.standard_normal(size).astype(np.float32)]
    out = []
    for v in range(n):
        history.append(history[-1] - np.float32(0.05) * rng.standard_normal(size).astype(np.float32))
        tau = int(rng.integers(0, min(3, v + 1) + 1))
        out.append((rng.standard_normal(size).astype(np.float32), history[v + 1], history[v + 1 - tau],
                    ctx(version=v + 1, tau=tau)))
    return out


def bits(a):
    return np.asarray(a, np.float32).view(np.uint32)


# ---- building ------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [None, "none", " none "])
def test_no_transform(spec):
    assert make_transform(spec, SIZE) is None
    check_transform(spec)


@pytest.mark.parametrize("spec, cls", [("dcasgd:lambda=0.1", DCASGD), ("gap_aware", GapAware)])
def test_builtins_need_the_backup(spec, cls):
    t = make_transform(spec, SIZE)
    assert isinstance(t, cls) and t.needs_backup and t.name == spec.split(":")[0]
    check_transform(spec)


def test_state_bytes_count_the_arrays_held():
    assert make_transform("dcasgd:lambda=1", SIZE).state_bytes() == SIZE * 4           # scratch
    assert make_transform("dcasgd:lambda=1,adaptive=1", SIZE).state_bytes() == 3 * SIZE * 4
    assert make_transform("gap_aware", SIZE).state_bytes() == 4 * SIZE * 4  # ema, w_prev, 2 scratch


# ---- DC-ASGD -------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["dcasgd:lambda=0", "dcasgd:lambda=0,adaptive=1"])
def test_lambda_zero_gives_the_gradient_bitwise(spec):
    t = make_transform(spec, 5)
    g = f32(1.5, -0.0, 1e30, 3e-39, -2.0)  # 1e30: g*g*gap is inf, and inf*0 would be NaN
    out = t.apply(g, f32(1, 2, 3, 4, 5), f32(0, 0, 0, 0, 0), ctx())
    assert np.array_equal(bits(out), bits(g))


def test_constant_form_matches_a_hand_computation():
    t = make_transform("dcasgd:lambda=0.25", 4)
    g, w_now, w_bak = f32(1, 2, -0.5, 0), f32(1, 1, 1, 1), f32(0.5, 1.5, 1, -2)
    # gap (0.5, -0.5, 0, 3); g*g*gap (0.5, -2, 0, 0); *0.25 (0.125, -0.5, 0, 0); + g
    out = t.apply(g, w_now, w_bak, ctx())
    assert np.array_equal(out, f32(1.125, 1.5, -0.5, 0))
    assert out.dtype == np.float32


def test_constant_form_matches_numpy_in_the_documented_order():
    t = make_transform("dcasgd:lambda=0.7", SIZE)
    for g, w_now, w_bak, c in pushes():
        expected = (((w_now - w_bak) * g) * g) * np.float32(0.7) + g
        assert np.array_equal(bits(t.apply(g, w_now, w_bak, c)), bits(expected))


@pytest.mark.parametrize("m, eps", [(0.95, 1e-7), (0.5, 1e-3), (0.0, 1e-7)])
def test_adaptive_form_matches_a_numpy_reference_over_several_pushes(m, eps):
    spec = f"dcasgd:lambda=2,adaptive=1,m={m},eps={eps}"
    t = make_transform(spec, SIZE)
    ms = np.zeros(SIZE)
    for g, w_now, w_bak, c in pushes(seed=1, n=12):
        g64 = g.astype(np.float64)
        ms = m * ms + (1 - m) * g64 * g64  # updated with this g before it is used
        expected = g64 + 2.0 / np.sqrt(ms + eps) * g64 * g64 * (w_now.astype(np.float64) - w_bak)
        np.testing.assert_allclose(t.apply(g, w_now, w_bak, c), expected, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(t.export_state()["ms"], ms, rtol=2e-5)


def test_adaptive_mean_square_advances_without_a_backup():
    t = make_transform("dcasgd:lambda=1,adaptive=1,m=0.5", 2)
    g = f32(2, -4)
    assert t.apply(g, f32(0, 0), None, ctx()) is g
    assert np.array_equal(t.export_state()["ms"], f32(2, 8))  # 0.5 * g*g


# ---- Gap-Aware -----------------------------------------------------------------------------------
def gap_aware_with_step(step, beta=0.5):
    """A gap_aware that has seen one update of `step` per element: its C is `step`."""
    t = make_transform(f"gap_aware:beta={beta}", len(step))
    w0 = np.zeros(len(step), np.float32)
    t.apply(np.ones(len(step), np.float32), w0, w0, ctx(version=0))
    return t, w0 + step


def test_gap_aware_passes_the_gradient_before_any_change_was_seen():
    t = make_transform("gap_aware", 3)
    g = f32(1, 2, 3)
    assert np.array_equal(t.apply(g, f32(0, 0, 0), f32(5, 5, 5), ctx(version=0)), g)


def test_gap_aware_with_no_gap_returns_the_gradient_bitwise():
    t = make_transform("gap_aware", SIZE)
    for g, w_now, _, c in pushes(seed=2):
        assert np.array_equal(bits(t.apply(g, w_now, w_now.copy(), c)), bits(g))


def test_gap_aware_divides_by_one_plus_the_gap_in_average_steps():
    step = f32(0.125, 0.125, 0.125, 0.125)
    t, w1 = gap_aware_with_step(step)
    g = f32(1, 1, -3, 2)
    w_bak = w1 - f32(0, 0.125, 1.25, 0)  # gaps of 0, 1 and 10 average steps
    out = t.apply(g, w1, w_bak, ctx(version=1, tau=2))
    np.testing.assert_allclose(out, f32(1, 0.5, -3 / 11, 2), rtol=1e-6)
    assert abs(out[2]) < abs(g[2]) / 10  # the element with the large gap shrinks most


def test_gap_aware_c_is_a_bias_corrected_per_update_average():
    t = make_transform("gap_aware:beta=0.5", 1)
    w = [f32(0), f32(1), f32(3), f32(3)]  # changes of 1, then 2 over two updates (1 each)
    t.apply(f32(1), w[0], w[0], ctx(version=0))
    t.apply(f32(1), w[1], w[1], ctx(version=1))
    t.apply(f32(1), w[2], w[2], ctx(version=3))
    state = t.export_state()
    assert int(state["observed"]) == 2
    c = state["ema"][0] / (1 - 0.5 ** 2)
    assert c == 1.0  # ema 0.75 = 0.5*(0.5*1) + 0.5*1: the average of 1 and 1
    t.apply(f32(1), w[3], w[3], ctx(version=3))  # same version (a rejected push): no observation
    assert int(t.export_state()["observed"]) == 2
    out = t.apply(f32(1), w[3], f32(1), ctx(version=3))  # gap 2 = two average steps
    np.testing.assert_allclose(out, f32(1 / 3), rtol=1e-6)


# ---- every transform -----------------------------------------------------------------------------
@pytest.mark.parametrize("spec", SPECS)
def test_inputs_are_never_modified(spec):
    t = make_transform(spec, SIZE)
    for g, w_now, w_bak, c in pushes(seed=3):
        copies = [a.copy() for a in (g, w_now, w_bak)]
        for a in (g, w_now, w_bak):
            a.flags.writeable = False  # a write would raise
        out = t.apply(g, w_now, w_bak, c)
        assert out.dtype == np.float32 and out.shape == (SIZE,) and np.isfinite(out).all()
        assert all(np.array_equal(bits(a), bits(b)) for a, b in zip((g, w_now, w_bak), copies))


@pytest.mark.parametrize("spec", SPECS)
def test_without_a_backup_the_gradient_comes_back_unchanged(spec):
    t = make_transform(spec, SIZE)
    for g, w_now, _, c in pushes(seed=4):
        assert np.array_equal(bits(t.apply(g, w_now, None, c)), bits(g))


@pytest.mark.parametrize("spec", SPECS)
def test_state_round_trip_gives_identical_next_outputs(spec):
    seq = pushes(seed=5, n=10)
    a = make_transform(spec, SIZE)
    for p in seq[:6]:
        a.apply(*p)
    b = make_transform(spec, SIZE)
    b.load_state({k: np.array(v) for k, v in a.export_state().items()})
    for p in seq[6:]:
        assert np.array_equal(bits(a.apply(*p).copy()), bits(b.apply(*p)))


def test_loading_state_of_the_wrong_size_is_refused():
    a, b = make_transform("gap_aware", 4), make_transform("gap_aware", 5)
    with pytest.raises(ValueError, match="shape"):
        b.load_state(a.export_state())


# ---- bad specs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, words", [
    ("dcasgdd", ["gradient_transform", "'dcasgdd'", "none, dcasgd, gap_aware", "package.module:Factory"]),
    ("dcasgd", ["needs lambda", "dcasgd:lambda="]),
    ("dcasgd:lambda=-0.1", ["lambda=-0.1", ">= 0"]),
    ("dcasgd:lambda=1,adaptive=1,m=1", ["m=1.0", "0 <= m < 1"]),
    ("dcasgd:lambda=1,adaptive=1,m=-0.5", ["m=-0.5", "0 <= m < 1"]),
    ("dcasgd:lambda=1,adaptive=1,eps=0", ["eps=0.0", "> 0"]),
    ("dcasgd:lambda=1,adaptive=2", ["adaptive=2.0", "0 or 1"]),
    ("dcasgd:lambda=1,m=0.9", ["adaptive form", "adaptive=1"]),
    ("dcasgd:lambda=1,beta=0.9", ["no parameter", "'beta'", "lambda, adaptive, m, eps"]),
    ("gap_aware:beta=1", ["beta=1.0", "0 <= beta < 1"]),
    ("gap_aware:eps=-1", ["eps=-1.0", "> 0"]),
    ("gap_aware:lambda=1", ["no parameter", "'lambda'", "beta, eps"]),
    ("dcasgd:lambda", ["key=value"]),
    ("dcasgd:lambda=abc", ["not a number"]),
    ("", ["empty"]),
    ("no_such_module_xyz:Transform", ["cannot import"]),
    ("math:NoSuchTransform", ["no attribute"]),
])
def test_bad_specs_are_one_line_user_errors_naming_the_field(spec, words):
    with pytest.raises(UserError) as err:
        check_transform(spec)
    message = str(err.value)
    assert message.startswith("gradient_transform") and "\n" not in message
    assert all(w in message for w in words), message


# ---- plug-ins ------------------------------------------------------------------------------------
@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    (tmp_path / "my_transforms.py").write_text(textwrap.dedent("""
        import numpy as np

        class Scale:
            needs_backup = False

            def __init__(self, size, factor=0.5):
                self.size, self.factor = size, np.float32(factor)

            def apply(self, grad, w_now, w_bak, ctx):
                return grad * self.factor

        class NoSize:
            def __init__(self, factor=1.0):
                pass

        class NoApply:
            needs_backup = False

            def __init__(self, size):
                pass

        class WrongDtype(Scale):
            def apply(self, grad, w_now, w_bak, ctx):
                return grad.astype(np.float64)

        class InPlace(Scale):
            def apply(self, grad, w_now, w_bak, ctx):
                grad *= 2
                return grad

        class Raises(Scale):
            def apply(self, grad, w_now, w_bak, ctx):
                raise ZeroDivisionError("oops")

        not_callable = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_transforms"
    sys.modules.pop("my_transforms", None)


def test_a_plugin_with_parameters(plugin_module):
    spec = f"{plugin_module}:Scale:factor=0.25"
    check_transform(spec)
    t = make_transform(spec, 3)
    assert isinstance(t, GradientTransform) and not t.needs_backup and t.name == f"{plugin_module}:Scale"
    assert np.array_equal(t.apply(f32(4, 8, -4), f32(0, 0, 0), None, ctx()), f32(1, 2, -1))
    assert t.state_bytes() == 0 and t.export_state() == {}  # the defaults it did not define


@pytest.mark.parametrize("name, words", [
    ("NoSize", ["factory(size=...", "size"]),
    ("NoApply", ["without apply", "apply(grad, w_now, w_bak, ctx)"]),
    ("WrongDtype", ["float64", "finite float32 array"]),
    ("InPlace", ["modified its inputs"]),
    ("Raises", ["oops", "test push"]),
    ("not_callable", ["not callable"]),
])
def test_broken_plugins_fail_at_check_time(plugin_module, name, words):
    with pytest.raises(UserError) as err:
        check_transform(f"{plugin_module}:{name}")
    message = str(err.value)
    assert message.startswith("gradient_transform") and "\n" not in message
    assert all(w in message for w in words), message


def test_a_plugin_given_an_unknown_parameter(plugin_module):
    with pytest.raises(UserError, match="gradient_transform .*factor="):
        check_transform(f"{plugin_module}:NoApply:factor=2")
