"""Recording what the cloud answered (issue 15, point 3): the free labels of the fallback flywheel.

Opt-in: nothing is recorded unless a :class:`Recorder` is built (``edgekit serve --record DIR``).
Each query the cascade sent to the cloud becomes one JSON line::

    {"id": "3f9a1c2e-17", "time": "2026-05-09T07:35:25.123Z", "route": "CLOUD", "model": "shop",
     "version": "3", "text": "my card <NUMBER> was charged twice", "redactions": {"number": 1},
     "edge_top_k": [["refund_status", 0.41], ["order_status", 0.22]], "edge_score": 0.41,
     "cloud_label": "refund_status", "cloud_score": 0.93}

**Files.** ``DIR/records-<UTC yyyymmddTHHMMSS>Z-<pid>-<n>.jsonl``, created with ``O_EXCL`` (a
process never appends to a file it did not create: the pid keeps the workers of ``serve --workers``
apart, ``n`` a restarted process that got the same pid) and written through an ``O_APPEND`` file
descriptor. A file rolls over when the next line would take it past ``max_bytes`` and at UTC
midnight (so that the age limit can drop whole days). Retention, at start-up, after each
rollover and once a minute: files last written more than ``max_age_days`` ago are deleted, then
the oldest until at most ``max_files`` remain. A file some process is still writing is never
deleted (writers hold an ``flock`` on it, which the kernel drops when the process dies), so with
N workers on one DIR the count limit yields to the N live files. Files that do not match the
name pattern are left alone.

**Acknowledged.** :meth:`Recorder.record` returns the record's id once its whole line,
``\\n`` included, was written by **one** ``os.write`` call, or None if it was not (closed, disk
full, unencodable: counted in ``edgekit_records_dropped_total{reason}``, never raised into the
request). There is no buffer in the process: an acknowledged line is in the kernel and survives
the process being killed (SIGKILL, OOM) as soon as ``record`` returns. ``fsync`` decides what
survives a power cut: ``"never"`` (whatever the kernel wrote back, about 30 s behind),
``"rotate"`` (the default: a file is fsynced when it is closed, by rollover or :meth:`close`,
and a new file's directory entry at creation) or ``"always"`` (``fdatasync`` before ``record``
returns: milliseconds per record on an SD card, measured 3.7 ms here on a virtual disk).

**Torn lines.** A failed or short write is cut off again (``ftruncate`` to the last whole line)
and the record dropped, so a live file holds only whole lines. A process killed inside the
``write`` of a line longer than a page may leave that line's head at the end of its file; it
was never acknowledged, and since no process appends to that file again it can only be the
file's last line. Such a tail is **left where it is** and skipped by :func:`read_records`
(repairing it at start-up would mean truncating files that another live worker may be writing).

**Redaction** (on by default; ``RecorderSettings.redact``) replaces personal data in the text
before it is written, in this order: e-mail addresses (``<EMAIL>``); phone numbers with 7 to
15 digits (``<PHONE>``) written internationally (``+49 151 1234 5678``, ``0044 20 7946 0958``,
``+1 (555) 123-4567``) or in common local formats (``(555) 123-4567``, ``555-123-4567``,
``555.123.4567``, ``555 123 4567``, ``123-4567``, trunk-prefixed ``020 7946 0958``,
``06 12 34 56 78``, ``0151 12345678``); then any run of at least ``min_digits`` (6) digits
(``<NUMBER>``), also split by dashes (``4111-1111-1111-1111``, ``123-45-6789``) or by single
spaces between groups of three or more digits (``4111 1111 1111 1111``). Digits glued to
letters count too (``ABC1234567`` becomes ``ABC<NUMBER>``). Kept: sizes, quantities, models
and prices (``65 inch tv``, ``2 coupons``, ``sizes 10 12 14``, ``rtx 4090``, ``$1,299.99``).
**Order numbers** are not told apart from other numbers (a pattern cannot tell an order number
from an account number): they follow the length rule, so ``order 12345`` is kept and
``order #123456`` becomes ``order #<NUMBER>``; a shop whose order numbers are shorter lowers
``min_digits``. Dates and year ranges written in digits (``2024-01-15``, ``2019-2020``) are
redacted as numbers: a birth date is personal data. Not covered: names, postal addresses,
spelled-out addresses (``jane at example dot com``).

Metrics (``registry``, as the data plane's): ``edgekit_records_written_total``,
``edgekit_records_dropped_total{reason}`` (closed, error, invalid),
``edgekit_records_redacted_total{kind}`` (replacements) and
``edgekit_records_files_deleted_total{reason}`` (age, count).
"""

from __future__ import annotations

import enum
import itertools
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter

from edgekit.errors import ConfigError, DataError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: retention cannot see other processes' files
    fcntl = None  # type: ignore[assignment]

__all__ = ["FsyncPolicy", "PersonalData", "Recorder", "RecorderSettings", "read_records", "redact"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"records-(\d{8}T\d{6})Z-(\d+)-(\d+)\.jsonl")
_SWEEP_EVERY_S = 60.0
_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False).encode  # strict JSON: NaN raises


class FsyncPolicy(str, enum.Enum):
    """When records are forced to the storage device (see the module docstring)."""

    NEVER = "never"
    ROTATE = "rotate"
    ALWAYS = "always"


class PersonalData(str, enum.Enum):
    """What redaction replaces, and its placeholder."""

    EMAIL = "email"  # <EMAIL>
    PHONE = "phone"  # <PHONE>
    NUMBER = "number"  # <NUMBER>


@dataclass(frozen=True)
class RecorderSettings:
    """Where and how much to record (``--record DIR``, ``--record-max-bytes`` ...)."""

    directory: Path
    max_bytes: int = 64 * 1024 * 1024  # per file
    max_files: int | None = 16  # None: no count limit
    max_age_days: float | None = 30.0  # None: no age limit
    fsync: FsyncPolicy = FsyncPolicy.ROTATE
    redact: frozenset[PersonalData] = frozenset(PersonalData)  # empty: record texts as they came
    min_digits: int = 6  # the shortest digit run replaced by <NUMBER>

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", Path(self.directory))
        object.__setattr__(self, "fsync", _enum(FsyncPolicy, self.fsync, "fsync"))
        kinds = [self.redact] if isinstance(self.redact, str) else self.redact
        object.__setattr__(self, "redact", frozenset(_enum(PersonalData, k, "redact") for k in kinds))
        if self.max_bytes < 1:
            raise ConfigError(f"max_bytes (--record-max-bytes) must be positive, got {self.max_bytes}")
        if self.max_files is not None and self.max_files < 1:
            raise ConfigError(f"max_files (--record-max-files) must be at least 1, got {self.max_files}")
        if self.max_age_days is not None and not self.max_age_days > 0:
            raise ConfigError(f"max_age_days (--record-max-age-days) must be positive, got {self.max_age_days}")
        if self.min_digits < 2:
            raise ConfigError(f"min_digits must be at least 2, got {self.min_digits}")


def _enum(kind: type[enum.Enum], value: object, what: str):
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in kind)
        raise ConfigError(f"{what} must be one of {choices}, got {value!r}") from None


# ---------------------------------------------------------------------------------------------- redaction

_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}(?![\w-])")
_PHONE = re.compile(r"""
    (?=[+(\d])(?<![\w+])(?<!\d[ .-])                       # not inside a word or continuing a number
    (?: (?:\+|\b00)[1-9]\d{0,2}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,4}){2,6}   # +49 151 1234 5678, 0044 20 ...
      | (?:\b1[ .-]?)?\(\d{2,4}\)[ .-]?\d{3,4}[ .-]?\d{3,4}   # (555) 123-4567, (020) 7946 0958
      | (?:\b1[ .-])?\d{3}([.-])\d{3}\1\d{4}                # 555-123-4567, 555.123.4567, 1-800-555-1234
      | (?:\b1\ )?\d{3}\ \d{3}\ \d{4}                       # 555 123 4567
      | \b0\d{1,4}(?:[ .-]?\d{2,4}){2,4}                    # 020 7946 0958, 06 12 34 56 78, 0151 12345678
      | \b\d{3}-\d{4}                                       # 123-4567
    )
    (?!\w|[.-]\d)                                          # and not going on
""", re.VERBOSE)
_DIGIT_RUN = re.compile(r"(?<!\d)\d+(?:[ -]\d+)*(?!\d)")
_SEPARATOR = re.compile(r"([ -])")
_HAS_DIGIT = re.compile(r"\d").search


class _Redactor:
    """Replaces the chosen kinds of personal data; counts what it replaced per kind."""

    def __init__(self, kinds: Iterable[PersonalData], min_digits: int) -> None:
        self.kinds = frozenset(kinds)
        self.min_digits = min_digits

    def __call__(self, text: str) -> tuple[str, dict[str, int]]:
        found: dict[str, int] = {}
        if PersonalData.EMAIL in self.kinds and "@" in text:  # the checks first: a third of the time
            text, n = _EMAIL.subn("<EMAIL>", text)
            if n:
                found["email"] = n
        if not _HAS_DIGIT(text):
            return text, found
        if PersonalData.PHONE in self.kinds:
            text = _PHONE.sub(lambda m: self._phone(m.group(0), found), text)
        if PersonalData.NUMBER in self.kinds:
            text = _DIGIT_RUN.sub(lambda m: self._number(m.group(0), found), text)
        return text, found

    @staticmethod
    def _phone(match: str, found: dict[str, int]) -> str:
        if not 7 <= sum(c.isdigit() for c in match) <= 15:  # E.164 numbers have at most 15 digits
            return match  # left to the digit-run rule
        found["phone"] = found.get("phone", 0) + 1
        return "<PHONE>"

    def _number(self, match: str, found: dict[str, int]) -> str:
        """Join the groups of one candidate into runs (a dash always joins, a space only groups of
        three or more digits), and replace each run of at least ``min_digits`` digits."""
        parts = _SEPARATOR.split(match)
        out: list[str] = []
        run, digits, previous = parts[0], len(parts[0]), parts[0]
        for separator, group in zip(parts[1::2], parts[2::2], strict=True):  # split() alternates
            if separator == "-" or (len(previous) >= 3 and len(group) >= 3):
                run, digits = run + separator + group, digits + len(group)
            else:
                out += [self._run(run, digits, found), separator]
                run, digits = group, len(group)
            previous = group
        out.append(self._run(run, digits, found))
        return "".join(out)

    def _run(self, run: str, digits: int, found: dict[str, int]) -> str:
        if digits < self.min_digits:
            return run
        found["number"] = found.get("number", 0) + 1
        return "<NUMBER>"


def redact(text: str, kinds: Iterable[PersonalData | str] = tuple(PersonalData), *, min_digits: int = 6) -> str:
    """``text`` with the chosen kinds of personal data replaced (the rules: the module docstring)."""
    return _Redactor((PersonalData(k) for k in kinds), min_digits)(text)[0]


# ---------------------------------------------------------------------------------------------- recorder


class Recorder:
    """Appends one JSON line per cloud-answered query to rotated files (see the module docstring).

    Thread-safe. Writing is synchronous, in the calling thread, on purpose: measured here (2 busy
    cores), a ``json.dumps`` of a record costs 7 us, a locked ``os.write`` of its 350 bytes 2.2 us
    and a ``queue.put_nowait`` 2.2 us too, so a writer thread would save the request nothing; a
    whole ``record()`` takes 12 us (25 us with three redactions, 30 us per record from 8 threads),
    after a cloud call of milliseconds. A queue would also compete for the GIL, make
    "acknowledged" wait for another thread anyway, and lose its contents when the process is killed.
    """

    def __init__(self, settings: RecorderSettings, *, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._clock = clock
        self._redactor = _Redactor(settings.redact, settings.min_digits)
        directory = settings.directory
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the record directory {directory}: {exc}") from exc
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigError(f"the record directory {directory} is not writable")
        registry = registry if registry is not None else CollectorRegistry()
        self._written = Counter("edgekit_records_written", "Cloud answers recorded (--record).", registry=registry)
        dropped = Counter("edgekit_records_dropped", "Cloud answers not recorded, by reason.", ["reason"],
                          registry=registry)
        self._dropped = {reason: dropped.labels(reason) for reason in ("closed", "error", "invalid")}
        redacted = Counter("edgekit_records_redacted", "Personal data replaced in recorded texts, by kind.",
                           ["kind"], registry=registry)
        self._redacted = {kind.value: redacted.labels(kind.value) for kind in PersonalData}
        deleted = Counter("edgekit_records_files_deleted", "Record files deleted by retention, by reason.",
                          ["reason"], registry=registry)
        self._deleted = {reason: deleted.labels(reason) for reason in ("age", "count")}

        self._lock = threading.Lock()  # guards the file: _fd, _path, _size, _day, _broken, _closed
        self._fd: int | None = None  # opened at the first record: a server that sends nothing to the cloud
        self._path: Path | None = None  # (or restarts in a loop) leaves no empty files behind
        self._size = 0  # bytes of whole lines in the file
        self._day = ""  # the UTC day the file belongs to
        self._broken = False  # a failed write could not be cut off: start a new file
        self._closed = False
        self._failing = False  # one warning per episode of failed writes
        self._files = itertools.count(1)
        self._run = secrets.token_hex(4)  # ids unique across restarts and workers
        self._ids = itertools.count(1)  # next() on it is atomic under the GIL
        self._sweeping = threading.Lock()
        self._stop = threading.Event()
        self.enforce_retention()
        self._sweeper: threading.Thread | None = None  # the count limit needs no timer: files only come with records
        if settings.max_age_days is not None:
            self._sweeper = threading.Thread(target=self._sweep_loop, name="edgekit-records-retention", daemon=True)
            self._sweeper.start()

    def record(self, text: str, *, edge_top_k: Sequence[tuple[str, float]], cloud_label: str, cloud_score: float,
               model_name: str, model_version: str, edge_score: float | None = None,
               route: str = "CLOUD") -> str | None:
        """Append one record; its id once the whole line is in the file, else None (never raises)."""
        if self._closed:
            self._dropped["closed"].inc()
            return None
        now = self._clock()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        text, found = self._redactor(text)
        record_id = f"{self._run}-{next(self._ids)}"
        try:
            data = (_encode({
                "id": record_id,
                "time": f"{stamp}.{int(now * 1000) % 1000:03d}Z",
                "route": getattr(route, "value", route),
                "model": model_name,
                "version": model_version,
                "text": text,
                "redactions": found,
                "edge_top_k": [[label, round(float(p), 6)] for label, p in edge_top_k],
                "edge_score": round(float(edge_top_k[0][1] if edge_score is None else edge_score), 6),
                "cloud_label": cloud_label,
                "cloud_score": round(float(cloud_score), 6),
            }) + "\n").encode("utf-8")
        except (TypeError, ValueError, IndexError) as exc:  # NaN scores, lone surrogates, no top-k
            log.warning("event=record_invalid id=%s error=%r", record_id, exc)
            self._dropped["invalid"].inc()
            return None
        written = self._append(data, now, stamp[:10])
        if written is None:  # closed meanwhile (counted)
            return None
        if not written:
            self._dropped["error"].inc()
            return None
        self._written.inc()
        for kind, n in found.items():
            self._redacted[kind].inc(n)
        return record_id

    def _append(self, data: bytes, now: float, day: str) -> bool | None:
        """Write one encoded line (rolling over to a new file when needed): True once it is in the file,
        False if the write failed, None if the recorder was closed meanwhile (counted as such)."""
        opened, retired, synced = False, None, None  # finished outside the lock
        with self._lock:
            if self._closed:
                self._dropped["closed"].inc()
                return None
            try:
                if (self._fd is None or self._broken or self._day != day
                        or (self._size and self._size + len(data) > self.settings.max_bytes)):
                    retired, opened = self._fd, True
                    self._open(now, day)
                written = self._write(data)
                if written and self.settings.fsync is FsyncPolicy.ALWAYS:
                    synced = os.dup(self._fd)  # synced outside the lock; a rollover cannot close it
            except OSError as exc:
                written = False
                self._failed(exc)
        if retired is not None:
            self._retire(retired)
        if opened:
            self.enforce_retention()
        if synced is not None:
            try:
                os.fdatasync(synced)
            except OSError as exc:
                written = False
                self._failed(exc)
            finally:
                os.close(synced)
        return written

    def _open(self, now: float, day: str) -> None:
        """A new file of this process (lock held); the previous one is retired by the caller."""
        self._fd = None
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
        while True:
            path = self.settings.directory / f"records-{stamp}Z-{os.getpid()}-{next(self._files)}.jsonl"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
            except FileExistsError:  # a restarted process with the same pid (pid 1 in a container)
                continue
            if _lock_new(fd):
                break
            os.close(fd)  # another process's retention took it between create and flock: next name
        self._fd, self._path, self._size, self._day, self._broken = fd, path, 0, day, False
        log.info("event=record_file_opened path=%s", path)
        if self.settings.fsync is not FsyncPolicy.NEVER:
            try:
                _fsync_dir(self.settings.directory)
            except OSError as exc:
                log.warning("event=record_fsync_failed path=%s error=%s", self.settings.directory, exc)

    def _write(self, data: bytes) -> bool:
        """One os.write of the whole line (lock held); a short or failed one is cut off again."""
        try:
            n = os.write(self._fd, data)  # type: ignore[arg-type]  # opened by the caller
        except OSError as exc:
            n, error = 0, exc
        else:
            error = None if n == len(data) else OSError(f"short write: {n} of {len(data)} bytes")
        if error is None:
            self._size += n
            if self._failing:
                self._failing = False
                log.info("event=record_write_recovered path=%s", self._path)
            return True
        try:
            os.ftruncate(self._fd, self._size)  # type: ignore[arg-type]  # nothing after the last whole line
        except OSError:
            self._broken = True
        self._failed(error)
        return False

    def _failed(self, error: OSError) -> None:
        if not self._failing:
            self._failing = True
            log.warning("event=record_write_failed path=%s error=%s (records are dropped until a write succeeds)",
                        self._path, error)

    def _retire(self, fd: int) -> None:
        """Finish a file no thread writes to any more (outside the lock)."""
        try:
            if self.settings.fsync is not FsyncPolicy.NEVER:
                os.fsync(fd)
        except OSError as exc:
            log.warning("event=record_fsync_failed error=%s", exc)
        finally:
            os.close(fd)  # also drops the flock: retention may delete the file from now on

    def enforce_retention(self) -> list[Path]:
        """Delete files past the age limit, then the oldest beyond the count; returns what was deleted."""
        settings = self.settings
        if not self._sweeping.acquire(blocking=False):
            return []  # another thread is at it
        try:
            files = []
            for path in _record_files(settings.directory):
                try:
                    files.append((path.stat().st_mtime, _sort_key(path), path))
                except FileNotFoundError:
                    continue
            files.sort()
            deleted = []
            if settings.max_age_days is not None:
                oldest_kept = self._clock() - settings.max_age_days * 86400.0
                for mtime, _, path in files:
                    if mtime < oldest_kept and _delete_unless_open(path):
                        deleted.append(path)
                        self._deleted["age"].inc()
            if settings.max_files is not None:
                left = [path for _, _, path in files if path not in deleted]
                for path in left[: max(0, len(left) - settings.max_files)]:
                    if _delete_unless_open(path):
                        deleted.append(path)
                        self._deleted["count"].inc()
            if deleted:
                log.info("event=record_files_deleted files=%d", len(deleted))
            return deleted
        finally:
            self._sweeping.release()

    def _sweep_loop(self) -> None:
        while not self._stop.wait(_SWEEP_EVERY_S):  # the age limit holds while no records come in
            try:
                self.enforce_retention()
            except OSError as exc:
                log.warning("event=record_retention_failed error=%s", exc)

    def close(self) -> None:
        """Stop recording: later records are dropped (reason ``closed``); the file is fsynced
        (unless ``fsync="never"``) and closed. Idempotent. The server calls it after its drain."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            fd, self._fd = self._fd, None
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=5.0)
        if fd is not None:
            self._retire(fd)

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _lock_new(fd: int) -> bool:
    """Hold the flock of a file this process just created, if it is still ours (not unlinked)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return os.fstat(fd).st_nlink > 0


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _delete_unless_open(path: Path) -> bool:
    """Unlink ``path`` unless a live writer holds its flock (this process's included)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
    finally:
        os.close(fd)


def _sort_key(path: Path) -> tuple[str, int, int]:
    stamp, pid, n = _NAME.fullmatch(path.name).groups()  # type: ignore[union-attr]
    return stamp, int(pid), int(n)


def _record_files(directory: Path) -> list[Path]:
    """The record files in ``directory``, oldest first (by creation time in the name, pid, number)."""
    return sorted((p for p in Path(directory).iterdir() if _NAME.fullmatch(p.name)), key=_sort_key)


def read_records(directory: Path | str, *, strict: bool = False) -> Iterator[dict]:
    """Every record in ``directory``, oldest file first, in file order.

    A file's last line without its ``\\n`` (torn by a crash, or being written right now) is
    skipped: it was never acknowledged. A line that is not a JSON object (a damaged disk) is
    skipped with a warning, or raises DataError when ``strict``.
    """
    for path in _record_files(Path(directory)):
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                if not raw.endswith(b"\n"):
                    log.debug("event=record_torn_tail path=%s line=%d", path, number)
                    break
                try:
                    record = json.loads(raw)
                    if not isinstance(record, dict):
                        raise TypeError(f"a JSON {type(record).__name__}, not an object")
                except (TypeError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
                    if strict:
                        raise DataError(f"{path}:{number} is not a record: {exc}") from exc
                    log.warning("event=record_unreadable path=%s line=%d error=%s", path, number, exc)
                    continue
                yield record
