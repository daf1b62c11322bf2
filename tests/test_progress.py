"""Progress: live bars on a terminal, plain lines at a bounded rate in logs and on SLURM."""

from __future__ import annotations

import io
import logging
import re

import pytest

from conftest import REPO
from lesioncl.progress import Progress, format_duration, progress
from lesioncl.utils import setup_logging


class FakeClock:
    def __init__(self, step: float) -> None:
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += self.step


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def captured():
    """The records of a private logger (as the rule's log would get them)."""
    logger = logging.getLogger("test.progress")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    yield logger, stream
    logger.removeHandler(handler)


def _run(n: int, clock: FakeClock, **kw) -> Progress:
    bar = progress(range(n), clock=clock, **kw)
    for _ in bar:
        clock.tick()
    return bar


def test_non_tty_gets_plain_lines_at_a_bounded_rate(captured, monkeypatch):
    monkeypatch.delenv("LESIONCL_PROGRESS", raising=False)
    logger, logged = captured
    stderr = io.StringIO()  # a log file / SLURM output: not a terminal
    clock = FakeClock(0.1)  # 1000 steps of 0.1 s = 100 s
    _run(1000, clock, desc="epoch 1/5", unit="step", interval=30, stream=stderr, logger=logger)
    assert stderr.getvalue() == ""  # no tqdm bar, no carriage returns
    lines = logged.getvalue().splitlines()
    assert len(lines) == 3 + 1, lines  # at 30, 60 and 90 s, then the final line
    assert "\r" not in logged.getvalue()
    first = lines[0]
    assert re.fullmatch(r"epoch 1/5: 300/1000 step \(30%\), 10 step/s, elapsed 0:00:30, ETA 0:01:10", first), first
    assert lines[-1] == "epoch 1/5: done, 1000 step in 0:01:40 (10 step/s)"


def test_rate_bound_holds_for_fast_loops(captured):
    logger, logged = captured
    clock = FakeClock(0.001)  # 100,000 fast steps in 100 s
    _run(100_000, clock, interval=10, stream=io.StringIO(), logger=logger)
    assert len(logged.getvalue().splitlines()) <= 100 / 10 + 1


def test_update_postfix_unknown_total_and_early_stop(captured):
    logger, logged = captured
    clock = FakeClock(1.0)
    with progress(total=None, desc="cache", unit="img", interval=2, clock=clock, stream=io.StringIO(),
                  logger=logger) as bar:
        for _ in range(5):
            clock.tick()
            bar.update(2)
            bar.set_postfix(loss="0.5000")
    lines = logged.getvalue().splitlines()
    assert lines[0] == "cache: 4 img, 2 img/s, elapsed 0:00:02, loss=0.5000"
    assert lines[-1] == "cache: done, 10 img in 0:00:05 (2 img/s), loss=0.5000"
    logged.truncate(0)
    logged.seek(0)
    stopped = progress(range(10), desc="x", interval=100, clock=FakeClock(1), stream=io.StringIO(), logger=logger)
    for i, _ in enumerate(stopped):
        if i == 3:
            break
    stopped.close()
    assert logged.getvalue().splitlines() == ["x: stopped at 3/10, 3 it in 0:00:00"]


def test_terminal_gets_a_live_bar_and_the_log_file_the_lines(tmp_path, monkeypatch):
    monkeypatch.delenv("LESIONCL_PROGRESS", raising=False)
    tty = FakeTTY()
    monkeypatch.setattr("sys.stderr", tty)
    log_file = tmp_path / "logs/rule/job.log"
    setup_logging(log_file)  # the rule's log + a console handler on the (fake) terminal
    try:
        clock = FakeClock(1.0)
        _run(50, clock, desc="crop", unit="img", interval=10)
    finally:
        for handler in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(handler)
            handler.close()
    on_terminal = tty.getvalue()
    assert "\r" in on_terminal and "crop" in on_terminal  # tqdm's live bar
    assert "ETA" not in on_terminal  # the plain lines stay out of the bar's way
    logged = [line for line in log_file.read_text().splitlines() if "lesioncl.progress" in line]
    assert len(logged) == 5 + 1, logged  # every 10 s of 50 s, and the end
    assert logged[-1].endswith("crop: done, 50 img in 0:00:50 (1 img/s)")


def test_rule_log_gets_the_lines_when_stderr_is_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv("LESIONCL_PROGRESS", raising=False)
    slurm_out = io.StringIO()
    monkeypatch.setattr("sys.stderr", slurm_out)
    log_file = tmp_path / "job.log"
    setup_logging(log_file)
    try:
        _run(20, FakeClock(1.0), desc="features", unit="batch", interval=5)
    finally:
        for handler in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(handler)
            handler.close()
    for text in (slurm_out.getvalue(), log_file.read_text()):
        assert text.count("features: ") == 4 + 1 and "\r" not in text


def test_switches(monkeypatch, captured):
    logger, logged = captured
    monkeypatch.setenv("LESIONCL_PROGRESS", "off")
    _run(10, FakeClock(100), interval=1, stream=FakeTTY(), logger=logger)
    assert logged.getvalue() == ""
    monkeypatch.setenv("LESIONCL_PROGRESS", "lines")
    tty = FakeTTY()
    _run(3, FakeClock(1), interval=1, stream=tty, logger=logger)
    assert tty.getvalue() == "" and len(logged.getvalue().splitlines()) == 3 + 1
    monkeypatch.setenv("LESIONCL_PROGRESS", "sometimes")
    with pytest.raises(ValueError, match="LESIONCL_PROGRESS"):
        progress(range(3))
    monkeypatch.delenv("LESIONCL_PROGRESS")
    monkeypatch.setenv("LESIONCL_PROGRESS_INTERVAL", "soon")
    with pytest.raises(ValueError, match="LESIONCL_PROGRESS_INTERVAL"):
        progress(range(3))


def test_short_inner_loops_without_leave_stay_quiet(captured):
    """Epochs of a long run (leave=False; the trainer logs each epoch itself): a final line
    only for an epoch long enough to have had a periodic one."""
    logger, logged = captured
    _run(3, FakeClock(1.0), desc="epoch 1/500", leave=False, interval=30, stream=io.StringIO(), logger=logger)
    assert logged.getvalue() == ""
    _run(40, FakeClock(1.0), desc="epoch 2/500", leave=False, interval=30, stream=io.StringIO(), logger=logger)
    assert [line.split(",")[0] for line in logged.getvalue().splitlines()] == [
        "epoch 2/500: 30/40 it (75%)", "epoch 2/500: done"]


def test_format_duration():
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(float("nan")) == "?"


def test_the_package_uses_one_progress_helper():
    """No module but lesioncl.progress drives tqdm itself."""
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "src/lesioncl").rglob("*.py")
                 if p.name != "progress.py" and re.search(r"^\s*(from tqdm|import tqdm)", p.read_text(), re.M)]
    assert not offenders, f"use lesioncl.progress.progress instead of tqdm in {offenders}"
