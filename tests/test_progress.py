"""Progress lines for logs and pipes: start, at least every N seconds, finish; done/total, rate, ETA."""

from __future__ import annotations

import time

from curation.progress import LineProgress


def test_lines_come_while_one_long_call_blocks_and_say_where_it_stands() -> None:
    lines: list[str] = []
    p = LineProgress(lines.append, every_s=0.2)
    p.start("label: judge", total=10)
    p.advance(4)
    time.sleep(0.75)  # one slow call: no advance, yet lines keep coming
    p.advance(6)
    p.finish()
    assert lines[0] == "label: judge: started, 10 to do"
    ticks = lines[1:-1]
    assert len(ticks) >= 2 and all("4/10 (40%)" in line and "/s" in line and "ETA" in line for line in ticks)
    assert lines[-1].startswith("label: judge: done, 10 in ")
    count = len(lines)
    time.sleep(0.5)
    assert len(lines) == count  # the timer stopped with the work


def test_without_a_total_it_counts_and_gives_no_eta() -> None:
    lines: list[str] = []
    p = LineProgress(lines.append, every_s=0.0)
    p.start("ingest hh")
    p.advance(3)
    p.finish()
    assert any("3 done" in line for line in lines) and not any("ETA" in line for line in lines)
    assert lines[-1].startswith("ingest hh: done, 3 in")
