"""Recording what the cloud answered (issue 15, point 3; acceptance "Records"): rotated, retained
JSONL files with no torn line and no acknowledged record lost, even when the writer is killed
mid-load; personal data redacted on made-up e-mails, phone numbers and digit runs.

The crash test runs the Recorder in a real subprocess that writes from several threads as fast as
it can and prints each record's id once ``record()`` has returned; the test kills it (SIGKILL, and
SIGTERM with the server's ``close()``) and then reads the files.

How each test was checked to fail (each change made to runtime/recorder.py, then undone): writing
through a buffered file object instead of ``os.write`` loses acknowledged records in the SIGKILL
test; two ``os.write`` calls per line without the lock tear lines in the middle of the files
(concurrency and crash tests); without the lock the concurrency count is off; without the
``ftruncate`` after a short write, or acknowledging a failed write, the short-write test fails;
retention without the flock check deletes the live writer's file; without the day check no file
rolls over at midnight; without the phone rule, or with spaces joining groups of any size, the
redaction tests fail.
"""

from __future__ import annotations

import calendar
import datetime
import fcntl
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

import edgekit.runtime.recorder as recorder_module
from edgekit.errors import ConfigError, DataError
from edgekit.runtime.recorder import Recorder, RecorderSettings, read_records, redact

ANSWER = dict(edge_top_k=[("order_status", 0.41), ("refund_status", 0.22)], cloud_label="order_status",
              cloud_score=0.93, model_name="shop", model_version="7")


def files(directory: Path) -> list[Path]:
    return sorted(directory.glob("records-*.jsonl"))


def whole_lines(path: Path) -> tuple[list[dict], bytes]:
    """Every newline-terminated line of ``path`` parsed (fails on a torn one), and the unterminated tail."""
    *lines, tail = path.read_bytes().split(b"\n")
    return [json.loads(line) for line in lines], tail


def test_all_is_sorted_and_real():
    assert list(recorder_module.__all__) == sorted(recorder_module.__all__)
    assert all(hasattr(recorder_module, name) for name in recorder_module.__all__)


def test_a_record_holds_the_redacted_text_both_answers_and_the_time(tmp_path):
    registry = CollectorRegistry()
    with Recorder(RecorderSettings(tmp_path), registry=registry) as rec:
        assert files(tmp_path) == []  # nothing until something is recorded
        record_id = rec.record("mail jane.doe@example.com or call +44 20 7946 0958 about card 4111 1111 1111 1111",
                               route="CLOUD", **ANSWER)
    (record,) = read_records(tmp_path)
    assert record["id"] == record_id
    assert record["text"] == "mail <EMAIL> or call <PHONE> about card <NUMBER>"
    assert record["redactions"] == {"email": 1, "phone": 1, "number": 1}
    assert record["edge_top_k"] == [["order_status", 0.41], ["refund_status", 0.22]]
    assert (record["edge_score"], record["cloud_label"], record["cloud_score"]) == (0.41, "order_status", 0.93)
    assert (record["model"], record["version"], record["route"]) == ("shop", "7", "CLOUD")
    when = datetime.datetime.fromisoformat(record["time"])
    assert when.utcoffset() == datetime.timedelta(0)
    assert abs(when.timestamp() - time.time()) < 60
    assert registry.get_sample_value("edgekit_records_written_total") == 1
    assert registry.get_sample_value("edgekit_records_redacted_total", {"kind": "phone"}) == 1


# ------------------------------------------------------------------------------------------------ redaction

@pytest.mark.parametrize("text, expected", [
    ("reach me at jane.doe+shop@example.co.uk.", "reach me at <EMAIL>."),
    ("JOHN_1987@mail-box.de wrote", "<EMAIL> wrote"),
    ("call +49 151 1234 5678 today", "call <PHONE> today"),
    ("+1 (555) 123-4567", "<PHONE>"),
    ("+33 6 12 34 56 78", "<PHONE>"),
    ("0044 20 7946 0958", "<PHONE>"),
    ("+4915112345678", "<PHONE>"),
    ("(555) 123-4567", "<PHONE>"),
    ("555-123-4567 or 555.123.4567 or 555 123 4567", "<PHONE> or <PHONE> or <PHONE>"),
    ("1-800-555-1234", "<PHONE>"),
    ("020 7946 0958", "<PHONE>"),
    ("06 12 34 56 78", "<PHONE>"),
    ("0151 12345678", "<PHONE>"),
    ("call 123-4567 after 5", "call <PHONE> after 5"),
    ("card 4111 1111 1111 1111 expired", "card <NUMBER> expired"),
    ("4111-1111-1111-1111", "<NUMBER>"),
    ("4111111111111111", "<NUMBER>"),
    ("ssn 123-45-6789", "ssn <NUMBER>"),
    ("sort code 12-34-56", "sort code <NUMBER>"),
    ("DE89 3704 0044 0532 0130 00", "DE89 <NUMBER> 00"),
    ("account ABC1234567", "account ABC<NUMBER>"),
    ("order #123456", "order #<NUMBER>"),  # order numbers follow the length rule
    ("order 123-1234567-1234567", "order <NUMBER>"),
    ("born 1990-05-12", "born <NUMBER>"),
])
def test_personal_data_is_replaced(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize("text", [
    "65 inch tv", "2 coupons", "order 12345", "sizes 10 12 14", "iphone 15 pro", "rtx 4090", "$1,299.99",
    "buy 3 for 100", "0.5 liters", "room 1203, 12 pm", "where is my order?", "user@localhost", "a @ b",
])
def test_ordinary_text_is_kept(text):
    assert redact(text) == text


def test_redaction_can_be_chosen_or_turned_off(tmp_path):
    text = "jane@example.com 555-123-4567 4111111111111111 order 12345"
    assert redact(text, ["email"]) == "<EMAIL> 555-123-4567 4111111111111111 order 12345"
    assert redact(text, ["phone"]) == "jane@example.com <PHONE> 4111111111111111 order 12345"
    # without the phone rule a phone number is still a digit run (joined with the card: groups of 3+)
    assert redact(text, ["number"]) == "jane@example.com <NUMBER> order 12345"
    assert redact(text, ["email", "number"], min_digits=5) == "<EMAIL> <NUMBER> order <NUMBER>"
    with Recorder(RecorderSettings(tmp_path, redact=frozenset())) as rec:
        rec.record(text, **ANSWER)
    assert [r["text"] for r in read_records(tmp_path)] == [text]
    with pytest.raises(ConfigError, match="redact must be one of"):
        RecorderSettings(tmp_path, redact={"names"})


# ------------------------------------------------------------------------------------------------ files

def test_files_rotate_at_max_bytes_and_keep_every_record_in_order(tmp_path):
    with Recorder(RecorderSettings(tmp_path, max_bytes=2000, max_files=None)) as rec:
        ids = [rec.record(f"text number {i} " + "x" * (i * 7), **ANSWER) for i in range(60)]
    written = files(tmp_path)
    assert len(written) > 5
    for path in written:
        lines, tail = whole_lines(path)
        assert tail == b""
        assert path.stat().st_size <= 2000 or len(lines) == 1  # a line longer than the limit has a file of its own
    assert [r["id"] for r in read_records(tmp_path)] == ids


def test_retention_keeps_the_newest_files(tmp_path):
    registry = CollectorRegistry()
    with Recorder(RecorderSettings(tmp_path, max_bytes=1000, max_files=3), registry=registry) as rec:
        ids = [rec.record(f"text {i}", **ANSWER) for i in range(100)]
    assert len(files(tmp_path)) == 3
    kept = [r["id"] for r in read_records(tmp_path)]
    assert kept == ids[-len(kept):]  # the newest, with nothing missing in between
    assert registry.get_sample_value("edgekit_records_files_deleted_total", {"reason": "count"}) > 0


def test_retention_by_age_spares_live_files_and_foreign_ones(tmp_path):
    now = time.time()
    old = now - 40 * 86400
    stale, live = tmp_path / "records-20200101T000000Z-11-1.jsonl", tmp_path / "records-20200101T000000Z-12-1.jsonl"
    mine = tmp_path / "notes.jsonl"
    for path in (stale, live, mine):
        path.write_text('{"id": "x"}\n')
        os.utime(path, (old, old))
    held = os.open(live, os.O_RDONLY)  # another process's server still writing it
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        registry = CollectorRegistry()
        with Recorder(RecorderSettings(tmp_path, max_age_days=30), registry=registry, clock=lambda: now):
            assert not stale.exists()
            assert live.exists() and mine.exists()
    finally:
        os.close(held)
    assert registry.get_sample_value("edgekit_records_files_deleted_total", {"reason": "age"}) == 1


def test_files_roll_over_at_utc_midnight(tmp_path):
    midnight = calendar.timegm((2026, 5, 9, 0, 0, 0))
    clock = iter([midnight - 0.5, midnight - 0.25, midnight + 0.25]).__next__
    with Recorder(RecorderSettings(tmp_path, max_age_days=None), clock=clock) as rec:
        for i in range(3):
            rec.record(f"text {i}", **ANSWER)
    assert [p.name.split("-")[1] for p in files(tmp_path)] == ["20260508T235959Z", "20260509T000000Z"]
    assert [r["time"] for r in read_records(tmp_path)][-1] == "2026-05-09T00:00:00.250Z"


# ------------------------------------------------------------------------------------------------ failures

def test_a_short_write_is_cut_off_and_not_acknowledged(tmp_path, monkeypatch):
    registry = CollectorRegistry()
    real_write = os.write
    with Recorder(RecorderSettings(tmp_path), registry=registry) as rec:
        first = rec.record("first", **ANSWER)
        monkeypatch.setattr(recorder_module.os, "write", lambda fd, data: real_write(fd, data[: len(data) // 2]))
        assert rec.record("second, half written (disk full)", **ANSWER) is None
        monkeypatch.setattr(recorder_module.os, "write", real_write)
        third = rec.record("third", **ANSWER)
    (path,) = files(tmp_path)
    lines, tail = whole_lines(path)
    assert [r["id"] for r in lines] == [first, third] and tail == b""
    assert registry.get_sample_value("edgekit_records_dropped_total", {"reason": "error"}) == 1


def test_unencodable_records_and_records_after_close_are_dropped(tmp_path):
    registry = CollectorRegistry()
    rec = Recorder(RecorderSettings(tmp_path, fsync="always"), registry=registry)
    assert rec.record("fine", **ANSWER) is not None
    assert rec.record("nan score", **{**ANSWER, "cloud_score": math.nan}) is None
    rec.close()
    rec.close()  # idempotent
    assert rec.record("too late", **ANSWER) is None
    assert [r["text"] for r in read_records(tmp_path)] == ["fine"]
    assert registry.get_sample_value("edgekit_records_dropped_total", {"reason": "invalid"}) == 1
    assert registry.get_sample_value("edgekit_records_dropped_total", {"reason": "closed"}) == 1


def test_the_reader_skips_a_torn_tail_and_damaged_lines(tmp_path):
    path = tmp_path / "records-20260509T000000Z-1-1.jsonl"
    path.write_bytes(b'{"id": "a"}\n\x00\x00garbage\n{"id": "b"}\n{"id": "c", "text": "cut sho')
    assert [r["id"] for r in read_records(tmp_path)] == ["a", "b"]
    with pytest.raises(DataError, match=":2 is not a record"):
        list(read_records(tmp_path, strict=True))


def test_settings_are_checked(tmp_path):
    bad_settings = ({"max_bytes": 0}, {"max_files": 0}, {"max_age_days": 0}, {"fsync": "sometimes"}, {"min_digits": 1})
    for bad in bad_settings:
        with pytest.raises(ConfigError):
            RecorderSettings(tmp_path, **bad)


# ------------------------------------------------------------------------------------------------ concurrency

def test_many_threads_every_line_whole_and_the_count_exact(tmp_path):
    threads, per_thread = 16, 250
    acknowledged: list[str] = []
    lock = threading.Lock()
    with Recorder(RecorderSettings(tmp_path, max_bytes=64 * 1024, max_files=None)) as rec:
        def work(t: int) -> None:
            ids = [rec.record(f"thread {t} text {i} " + "y" * (i % 50), **ANSWER) for i in range(per_thread)]
            with lock:
                acknowledged.extend(ids)

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    assert None not in acknowledged and len(set(acknowledged)) == threads * per_thread
    seen = []
    for path in files(tmp_path):
        lines, tail = whole_lines(path)
        assert tail == b""
        seen += [r["id"] for r in lines]
    assert len(files(tmp_path)) > 1  # rotated under contention
    assert sorted(seen) == sorted(acknowledged)


# ------------------------------------------------------------------------------------------------ crash

WRITER = textwrap.dedent("""
    import os, random, signal, sys, threading
    from edgekit.runtime.recorder import Recorder, RecorderSettings

    rec = Recorder(RecorderSettings(sys.argv[1], max_bytes=256 * 1024, max_files=None))
    stop = threading.Event()

    def on_term(signum, frame):  # what `edgekit serve` does on SIGTERM: drain, then close
        stop.set()
        rec.close()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)

    def work(seed):
        rng = random.Random(seed)
        while not stop.is_set():
            text = "where is my parcel " + "z" * rng.choice((10, 300, 3000, 9000))  # some lines span pages
            record_id = rec.record(text, edge_top_k=[("order_status", 0.4)], cloud_label="order_status",
                                   cloud_score=0.9, model_name="shop", model_version="7")
            if record_id is not None:
                os.write(1, (record_id + "\\n").encode())  # acknowledged: one write, so lines never mix

    for seed in range(4):
        threading.Thread(target=work, args=(seed,), daemon=True).start()
    signal.pause() if hasattr(signal, "pause") else threading.Event().wait()
""")


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_mid_load_every_line_whole_and_every_acknowledged_record_present(tmp_path, signum):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE)
    acknowledged = []
    deadline = time.monotonic() + 15
    while len(acknowledged) < 3000 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acknowledged.append(line)
    proc.send_signal(signum)
    rest, _ = proc.communicate(timeout=15)
    acknowledged = [line.decode().strip() for line in acknowledged] + rest.decode().split()
    assert len(acknowledged) >= 3000, f"the writer did not get going (exit {proc.returncode})"
    if signum == signal.SIGTERM:
        assert proc.returncode == 0

    recorded, tails = set(), []
    written = files(tmp_path)
    for path in written:
        lines, tail = whole_lines(path)  # every newline-terminated line parses: none torn in the middle
        recorded.update(r["id"] for r in lines)
        if tail:
            tails.append(tail)
    assert len(written) > 3  # it was rotating while it died
    assert not set(acknowledged) - recorded, "acknowledged records are missing"
    assert {r["id"] for r in read_records(tmp_path)} == recorded  # the reader skips only the torn tails
    if signum == signal.SIGTERM:
        assert tails == []  # closed cleanly: not even a torn tail
    else:
        assert len(tails) <= 1  # at most the line being written when it died, never acknowledged
