"""Progress reads well outside a terminal: a few plain lines in a log file, a bar redrawn in place on a TTY."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

import sftl_dask.progress as progress_module
from sftl_dask.progress import Progress


class _Clock:
    """A clock the test moves by hand (s)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_about_one_line_per_10_percent_for_1000_fast_updates() -> None:
    out, clock = io.StringIO(), _Clock()
    with Progress("retrieve", stream=out, clock=clock) as update:
        for done in range(1, 1001):
            clock.t += 0.001  # 1 s in all: the time rule never fires
            update(done, 1000)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 11  # the first update, then each 10 % (the last one is 100 %)
    assert lines[0].startswith("retrieve: 1/1000 tasks")
    assert lines[-1].startswith("retrieve: 1000/1000 tasks (100 %)")


def test_a_log_gets_a_line_about_every_10_s_of_slow_work() -> None:
    out, clock = io.StringIO(), _Clock()
    with Progress("ingest", stream=out, clock=clock) as update:
        for done in range(1, 1001):
            clock.t += 1.0  # 1000 s for 1000 tasks: the 10 s rule fires before the 10 % one
            update(done, 1000)
    lines = out.getvalue().splitlines()
    assert 95 <= len(lines) <= 101
    assert lines[-1].startswith("ingest: 1000/1000 tasks (100 %), 999 s")


def test_close_writes_the_last_count_when_no_line_showed_it() -> None:
    out, clock = io.StringIO(), _Clock()
    update = Progress("validate", stream=out, clock=clock)
    update(1, 1000)
    update(42, 1000)
    update.close()
    assert out.getvalue().splitlines()[-1].startswith("validate: 42/1000 tasks (4 %)")


def test_no_update_no_line() -> None:
    out = io.StringIO()
    with Progress("simulate", stream=out):
        pass
    assert out.getvalue() == ""


def test_a_terminal_gets_a_tqdm_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[dict] = []

    class FakeBar:
        def __init__(self, **kw: object) -> None:
            made.append(kw)
            self.n, self.refreshed, self.closed = 0, 0, False

        def refresh(self) -> None:
            self.refreshed += 1

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(progress_module, "tqdm", FakeBar)
    out = _Terminal()
    with Progress("retrieve", stream=out) as update:
        for done in range(1, 1001):
            update(done, 1000)
        bar = update._bar
    assert len(made) == 1 and made[0]["total"] == 1000 and made[0]["file"] is out
    assert bar.n == 1000 and bar.refreshed == 1000 and bar.closed
    assert out.getvalue() == ""  # the bar writes, not the plain-line writer


def test_a_piped_sftl_run_writes_plain_lines(tmp_path) -> None:
    """A verb run with stderr to a file: no in-place redraws, one line per step of the work at most."""
    err = tmp_path / "err.log"
    with err.open("w") as fh:
        res = subprocess.run([sys.executable, "-m", "sftl_dask.cli", "simulate", "--out", str(tmp_path / "t.parquet"),
                              "--profiles", "120", "--workers", "1"], stderr=fh, stdout=subprocess.PIPE, text=True,
                             timeout=600, check=False)
    assert res.returncode == 0, err.read_text()
    lines = [ln for ln in err.read_text().splitlines() if ln.startswith("simulate:")]
    assert "\r" not in err.read_text()
    assert lines and lines[-1].startswith("simulate: 2/2 tasks (100 %)")
    assert len(lines) <= 3
