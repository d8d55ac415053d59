"""Progress lines, the hypervisor's share of the CPU, and the scale benchmark's table."""

from collections import namedtuple

import pytest

from argus_platform import progress
from argus_platform.progress import Progress, StolenCpu, duration


def test_duration_reads_as_seconds_minutes_or_hours():
    assert [duration(s) for s in (4.4, 65, 3 * 3600 + 125)] == ["4s", "1m05s", "3h02m"]


def test_progress_prints_a_rate_and_an_eta_then_a_closing_line(capsys):
    bar = Progress("synthetic log", 1000, "events", every_s=0.0)
    bar.update(250)
    bar.close("written")
    first, last = capsys.readouterr().out.splitlines()
    assert first.startswith("[argus] synthetic log: 250/1,000 events (") and ", ETA " in first
    assert last.startswith("[argus] synthetic log: 250 events in ") and last.endswith("; written")


def test_a_silent_progress_counts_without_printing(capsys):
    bar = Progress("test", 10, "users", enabled=False, every_s=0.0)
    bar.update(10)
    assert bar.close() >= 0 and capsys.readouterr().out == ""


Times = namedtuple("Times", "user nice system idle iowait irq softirq steal guest guest_nice")


def test_stolen_cpu_is_the_steal_share_of_all_cpu_time(monkeypatch):
    readings = iter([Times(50, 0, 10, 30, 0, 0, 0, 10, 5, 0), Times(110, 0, 20, 50, 0, 0, 0, 40, 9, 0)])
    monkeypatch.setattr(progress.psutil, "cpu_times", lambda: next(readings))
    # 100 → 220 jiffies outside guest time (guest is already inside user), 30 of the 120 stolen
    assert StolenCpu().fraction() == pytest.approx(30 / 120)


def test_stolen_cpu_is_none_where_the_os_does_not_report_it(monkeypatch):
    NoSteal = namedtuple("NoSteal", "user system idle")
    monkeypatch.setattr(progress.psutil, "cpu_times", lambda: NoSteal(1.0, 1.0, 1.0))
    assert StolenCpu().fraction() is None


def test_stolen_cpu_on_this_machine_is_a_share():
    share = StolenCpu()
    sum(i * i for i in range(200_000))
    got = share.fraction()
    assert got is None or 0.0 <= got <= 1.0


def test_scale_table_marks_a_missing_steal_figure():
    from argus_platform.bench_scale import COLUMNS, format_tables

    row = {key: 1 for key, _, _ in COLUMNS} | {"epoch_cpu_stolen_pct": None}
    table = format_tables({"points": [row, row | {"epoch_cpu_stolen_pct": 12.5}], "growth": []}).splitlines()
    steal_col = [title for _, title, _ in COLUMNS].index("CPU stolen in epoch %")
    assert [line.split(" | ")[steal_col].strip() for line in table[2:]] == ["n/a", "12.5"]
