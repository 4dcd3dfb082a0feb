"""ps.obs.progress.ProgressLine with an injected clock: elapsed time, ETA, the plain-output rhythm."""

import io

from ps.obs import progress
from ps.obs.progress import ProgressLine, clock_text


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_clock_text():
    assert [clock_text(s) for s in (0, 12.4, 59.6, 61, 3725)] == ["0:00", "0:12", "1:00", "1:01", "1:02:05"]
    assert clock_text(None) == "-"


def test_elapsed_and_eta_follow_the_injected_clock():
    clock, out = Clock(), io.StringIO()
    line = ProgressLine(4.0, out, clock=clock)
    clock.t += 5
    line.update(0.0, 0, None, None)
    assert "0:05 eta -" in out.getvalue()  # no rate yet: no ETA
    clock.t += 30  # 1 epoch in 30 s, 3 epochs left: 90 s
    line.update(1.0, 3000, 0.5, 2)
    line.close()
    last = out.getvalue().splitlines()[-1]
    assert "epoch  1.00/4.00  0:35 eta 1:30" in last
    assert "100 samples/s" in last and "acc 0.5000" in last and "tau p50 2" in last


def test_eta_uses_the_recent_rate_not_the_start_up():
    clock, out = Clock(), io.StringIO()
    line = ProgressLine(10.0, out, clock=clock)
    clock.t += 600  # a slow start (actors placed, data shipped) before the first update
    line.update(0.0, 0, None, None)
    for _ in range(progress.RATE_WINDOW):  # then one epoch every 10 s
        clock.t += 10
        line.update(line._history[-1][2] + 1, 0, None, None)
    line.close()
    # window of RATE_WINDOW updates: 9 epochs in 90 s, 0 left after 10 epochs -> 0:00
    assert out.getvalue().splitlines()[-1].split("eta ")[1].startswith("0:00")
    assert line.eta(5.0) == 50.0


def test_plain_output_prints_every_plain_every_s_then_the_final_state():
    clock, out = Clock(), io.StringIO()
    line = ProgressLine(2.0, out, clock=clock)
    for i in range(5):  # updates at 0, 4, 8, 12, 16 s: printed at 0 and 12
        line.update(i * 0.1, i * 10, None, None)
        clock.t += 4
    line.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "epoch  0.00" in lines[0] and "epoch  0.30" in lines[1]
    assert "epoch  0.40" in lines[2]


def test_default_stream_is_stderr_and_does_not_crash(capsys):
    line = ProgressLine(1.0)  # used to crash: isatty() on the None it was given
    line.update(0.5, 10, None, None)
    line.close()
    assert "epoch  0.50/1.00" in capsys.readouterr().err
