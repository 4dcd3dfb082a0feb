"""ps.obs.plots on hand-built event logs: image size, something drawn, errors that name the path."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ps.common import schema
from ps.common.errors import UserError
from ps.obs import events, plots

T0 = 1000.0
SIZE = (1200, 450)


@pytest.fixture
def plt():
    pyplot = plots.require_matplotlib()
    yield pyplot
    assert pyplot.get_fignums() == [], "a figure was left open"


def push(t, shard, replica, tau, accepted=True, reason=None):
    return schema.push_record(shard, T0 + t, replica, 10, 10 + tau, tau, 1.0 if accepted else 0.0,
                              accepted, reason, 1.0)


def full_stream() -> list[dict]:
    """Two shards, two replicas, a spread of tau over 30 s, fetches and two evaluations."""
    records = []
    for i in range(60):
        t, replica = i * 0.5, i % 2
        for shard in (0, 1):
            records.append(push(t, shard, replica, (i * 7 + shard) % 4 + (9 if i == 40 else 0)))
        records.append(schema.fetch_record(T0 + t, replica, [i, i - i % 3], 0.01))
    records.append(push(30.0, 1, 0, 2, accepted=False, reason="nonfinite: gradient has NaN"))
    records.append(schema.eval_record(T0 + 15, 0.6, 1.1, [30, 30], 960))
    records.append(schema.eval_record(T0 + 31, 0.8, 0.6, [60, 60], -1))
    return records


def logged(tmp_path, records, header=None) -> list[dict]:
    """Writes the records as the job would and reads them back, so the plots see real log records."""
    path = tmp_path / schema.LOG_NAME
    log = events.EventLog(path)
    log.append([header or schema.header_record(T0, 2, 2, [100, 50])])
    log.append(records)
    log.close()
    return list(events.read_events(path))


def pixels(path, size=SIZE) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as image:
        assert image.size == size
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_drawn(path) -> None:
    """Both panels hold more than a frame: many colours and varying pixels inside each half."""
    rgb = pixels(path)
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20
    for left in (80, 680):  # the inside of the left and of the right panel
        assert rgb[60:400, left:left + 420].std() > 5


def non_white_in_middle(path, centre_x: int) -> int:
    """Non-white pixels in a strip through a panel's centre, where a no-data sentence goes."""
    rgb = pixels(path)
    strip = rgb[200:250, centre_x - 150:centre_x + 150]
    return int((strip.min(axis=2) < 200).sum())


@pytest.mark.parametrize("by", ["shard", "replica"])
def test_staleness_png_is_a_drawn_1200x450_image(tmp_path, plt, by):
    out = plots.staleness_png(logged(tmp_path, full_stream()), by, tmp_path / "s.png", title="t")
    assert out == tmp_path / "s.png"
    assert_drawn(out)


def test_staleness_png_takes_a_generator_and_ignores_unknown_kinds(tmp_path, plt):
    records = logged(tmp_path, full_stream() + [{"kind": "scale", "t": T0 + 3, "replicas": 3}])
    out = plots.staleness_png((r for r in records), "shard", tmp_path / "s.png")
    assert_drawn(out)


def test_staleness_png_without_accepted_pushes_is_refused(tmp_path, plt):
    records = logged(tmp_path, [push(1.0, 0, 0, 3, accepted=False, reason="stale: tau 3 > 2")])
    with pytest.raises(UserError, match="no accepted pushes"):
        plots.staleness_png(records, "shard", tmp_path / "s.png")
    assert not (tmp_path / "s.png").exists()


def test_staleness_png_groups_only_by_shard_or_replica(tmp_path, plt):
    with pytest.raises(UserError, match="shard or replica"):
        plots.staleness_png(logged(tmp_path, full_stream()), "fetch", tmp_path / "s.png")


@pytest.mark.parametrize("where", ["missing/dir/s.png", "folder.png"])
def test_an_unwritable_path_is_a_user_error_naming_it(tmp_path, plt, where):
    (tmp_path / "folder.png").mkdir()  # a path that is a folder; the other is in a missing folder
    target = tmp_path / where
    with pytest.raises(UserError) as info:
        plots.staleness_png(logged(tmp_path, full_stream()), "shard", target)
    assert str(target) in str(info.value)


@pytest.mark.parametrize("draw", [plots.evaluations_png, plots.spread_png, plots.throughput_png,
                                  plots.shards_png])
def test_report_figures_are_drawn_1200x450_images(tmp_path, plt, draw):
    out = draw(logged(tmp_path, full_stream()), tmp_path / "f.png")
    assert out == tmp_path / "f.png"
    assert_drawn(out)


def test_throughput_png_draws_pushes_per_second_without_a_batch_size(tmp_path, plt):
    header = {**schema.header_record(T0, 2, 2, [100, 50]), "batch_size": 16, "n_push": 2}
    with_batch = plots.throughput_png(logged(tmp_path, full_stream(), header), tmp_path / "a.png")
    without = plots.throughput_png(logged(tmp_path, full_stream()), tmp_path / "b.png")
    assert_drawn(with_batch)
    assert_drawn(without)
    # same pushes, rates 32x apart: the label and the y-axis numbers differ
    assert not np.array_equal(pixels(with_batch), pixels(without))


def test_samples_per_push_needs_both_batch_size_and_n_push():
    assert plots.samples_per_push({"batch_size": 16, "n_push": 2}) == 32
    assert plots.samples_per_push({"batch_size": 16}) is None
    assert plots.samples_per_push({}) is None


def test_a_run_without_evaluations_says_so_in_both_panels(tmp_path, plt):
    records = [r for r in full_stream() if r["kind"] != "eval"]
    out = plots.evaluations_png(logged(tmp_path, records), tmp_path / "e.png")
    pixels(out)
    for centre in (300, 900):
        assert non_white_in_middle(out, centre) > 50


def test_empty_panels_are_never_blank(tmp_path, plt):
    records = logged(tmp_path, [])  # a header only: the run stopped before any push
    for draw in (plots.evaluations_png, plots.spread_png, plots.throughput_png, plots.shards_png):
        out = draw(records, tmp_path / f"{draw.__name__}.png")
        assert all(non_white_in_middle(out, centre) > 50 for centre in (300, 900)), draw.__name__


def test_stat_per_bin_uses_nearest_rank_percentiles():
    edges = plots.time_edges(10.0, bins=2)
    centres, p50 = plots.stat_per_bin([1, 2, 3, 4, 6], [1, 2, 9, 4, 7], edges, plots.nearest_rank(50))
    assert centres.tolist() == [2.5, 7.5] and p50.tolist() == [2, 7]
    assert plots.rate_per_bin([1, 2, 3, 6], edges, weight=10).tolist() == [6.0, 2.0]


def test_missing_matplotlib_is_a_user_error_saying_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UserError, match=r"pip install 'matplotlib>=3.7'"):
        plots.require_matplotlib()


def test_matplotlib_is_a_dependency_not_an_extra():
    """`pip install torch==2.13.0 -e .` (the README's command 1) must bring what `downpour report` needs."""
    from setuptools.config.setupcfg import read_configuration

    options = read_configuration(Path(__file__).resolve().parents[1] / "setup.cfg")["options"]
    assert any(r.startswith("matplotlib") for r in options["install_requires"])


@pytest.fixture
def drawn(monkeypatch):
    """The figures `plots.save` was given, kept open for inspection, then closed."""
    figures = []
    monkeypatch.setattr(plots, "save", lambda fig, path: figures.append(fig) or Path(path))
    yield figures
    import matplotlib.pyplot as pyplot
    for fig in figures:
        pyplot.close(fig)


def heat_maps(fig) -> list:
    """The axes of a figure that hold a heat map (a pcolormesh)."""
    from matplotlib.collections import QuadMesh
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"
            and any(isinstance(c, QuadMesh) for c in ax.collections)]


def test_staleness_by_replica_draws_one_heat_map_row_per_replica(tmp_path, plt, drawn):
    records = full_stream() + [push(31.0, 0, 2, 1)]  # a third replica, one push
    plots.staleness_png(logged(tmp_path, records), "replica", tmp_path / "s.png")
    rows = heat_maps(drawn[0])
    assert len(rows) == 3
    assert [ax.get_ylabel().split("\n")[0] for ax in rows] == ["replica 0", "replica 1", "replica 2"]
    # each row counts only its own replica's accepted pushes: 60 per replica (2 shards x 30), then 1
    counts = [int(ax.collections[0].get_array().sum()) for ax in rows]
    assert counts == [60, 60, 1]


def test_report_staleness_by_replica_is_split_by_replica(tmp_path, plt, drawn):
    from ps.obs import report

    report.draw_figures(logged(tmp_path, full_stream()), tmp_path, None)
    by_replica = [f for f in drawn if f.get_suptitle() == "staleness by replica"]
    assert len(by_replica) == 1 and len(heat_maps(by_replica[0])) == 2


def test_a_window_heat_map_shows_the_window_times(tmp_path, plt, drawn):
    records = logged(tmp_path, full_stream())
    plots.staleness_png(records, "shard", tmp_path / "s.png", window=(10.0, 20.0))
    rows = heat_maps(drawn[0])
    assert all(ax.get_xlim() == (10.0, 20.0) for ax in rows)
    assert rows[-1].get_xlabel() == "time since start (s)"
    # only pushes in [10, 20) s: 20 pushes per shard (one every 0.5 s)
    assert [int(ax.collections[0].get_array().sum()) for ax in rows] == [20, 20]


def test_the_cli_window_png_keeps_the_run_clock(tmp_path, plt, drawn, capsys):
    from ps.cli import main

    logged(tmp_path, full_stream())
    assert main(["staleness", str(tmp_path), "--window", "10:", "--png", str(tmp_path / "w.png")]) == 0
    rows = heat_maps(drawn[0])
    assert rows[0].get_xlim()[0] == 10.0 and rows[0].get_xlim()[1] == pytest.approx(31.0)


def test_a_window_without_pushes_is_refused_naming_the_span(tmp_path, plt):
    with pytest.raises(UserError, match="between 100 and 200 s"):
        plots.staleness_png(logged(tmp_path, full_stream()), "shard", tmp_path / "s.png",
                            window=(100.0, 200.0))


def test_the_modules_import_without_matplotlib_torch_or_ray():
    code = ("import sys; sys.modules['matplotlib'] = None; import ps.obs.plots, ps.obs.report; "
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
