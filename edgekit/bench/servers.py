"""edgekit servers as child processes, for the benchmarks (load, overhead, soak, flywheel) and
``make demo-triton``.

:class:`ServerProcess` runs an ``edgekit serve`` / ``serve-cloud`` command line and waits for its
ready line (``serving NAME (...) on HOST:PORT``, the real port also for ``--port 0``). The child
gets a session of its own: a Ctrl-C at the terminal reaches the parent only, whose ``finally``
stops the child in order (SIGTERM, a grace period, then SIGKILL to the whole group, which holds
tritonserver and its Python-backend stub: PyTriton starts them in the group of ``serve-cloud``), so
no server outlives the run. Its output goes to a log file: Triton logs a lot, and a pipe nobody
reads would fill and stall it.

The Triton cloud runs from a venv of its own (PyTriton needs numpy < 2): :func:`cloud_edgekit`
finds its ``edgekit`` and :func:`triton_cloud_argv` builds the ``serve-cloud --engine triton``
command; :func:`triton_stats` reads the model's counters from Triton's metrics port.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from edgekit.errors import ConfigError, EdgekitError

__all__ = ["ServerProcess", "cloud_edgekit", "interrupt_on_signals", "triton_cloud_argv", "triton_stats"]

# `serve --workers N` adds "(N workers, pids ...)" after the address, "(summed ...)" after the metrics URL
_SERVING = re.compile(r"^serving (\S+) .* on ([\w.\-\[\]:]*):(\d+)(?: \(\d+ workers[^)]*\))?\s*$", re.MULTILINE)
_METRICS = re.compile(r"^metrics on (https?://\S+)(?: \(summed over the workers\))?\s*$", re.MULTILINE)
_GRACE_S = 60.0  # Triton drains and unloads its model on SIGTERM: seconds on a busy machine


class ServerProcess:
    """``with ServerProcess(argv, log, name="triton") as server:`` (or ``.start()`` ... ``.stop()``)
    the started server (``address``, ``port``, ``model_name``, ``ready_line``, ``metrics_url`` when
    it printed one); stopped on exit. :class:`~edgekit.errors.EdgekitError` with the log's tail if it
    exits or stays silent first. Without ``log`` the output goes to a temporary file, removed by
    :meth:`stop`."""

    def __init__(self, argv: Sequence[str], log: Path | None = None, *, name: str = "edgekit",
                 timeout_s: float = 300.0, env: dict[str, str] | None = None) -> None:
        self.argv, self.name, self.timeout_s, self.env = list(argv), name, timeout_s, env
        self._own_log = log is None
        if log is None:
            fd, path = tempfile.mkstemp(prefix=f"edgekit-{name}-", suffix=".log")
            os.close(fd)
            log = Path(path)
        self.log = Path(log)
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = self.model_name = self.ready_line = ""
        self.port = 0
        self.metrics_url: str | None = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def start(self) -> ServerProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=self.env)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.timeout_s
        wants_metrics = "--metrics-port" in self.argv  # its line follows the serving line
        while not (match := _SERVING.search(text := self.text())) or (wants_metrics and not _METRICS.search(text)):
            if self.proc.poll() is not None:
                raise EdgekitError(f"the {self.name} server exited ({self.proc.returncode}) before serving; "
                                   f"its log ({self.log}) ends:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise EdgekitError(f"the {self.name} server did not report serving within {self.timeout_s:.0f} s; "
                                   f"its log ({self.log}) ends:\n{self.tail()}")
            time.sleep(0.2)
        self.ready_line = match.group(0).strip()
        self.model_name, host, self.port = match.group(1), match.group(2), int(match.group(3))
        local = "127.0.0.1" if host in ("0.0.0.0", "[::]", "::", "") else host
        self.address = f"{local}:{self.port}"
        metrics = _METRICS.search(text)
        self.metrics_url = metrics.group(1) if metrics else None

    def metric(self, name: str, missing: float | None = 0.0) -> float | None:
        """A sample's value summed over its labels, from the server's /metrics (prometheus_client's
        parser); ``missing`` when the server exports no such sample."""
        from prometheus_client.parser import text_string_to_metric_families

        if self.metrics_url is None:
            raise EdgekitError(f"the {self.name} server exports no metrics (start it with --metrics-port)")
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            body = response.read().decode()
        values = [sample.value for family in text_string_to_metric_families(body)
                  for sample in family.samples if sample.name == name]
        return sum(values) if values else missing

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace_s: float = _GRACE_S) -> int | None:
        """SIGTERM, up to ``grace_s`` to exit, then SIGKILL to the whole group (also on a second
        Ctrl-C meanwhile); whatever is left of the group is killed too. Returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                self._signal(signal.SIGCONT)  # in case it was stopped (SIGSTOP)
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(grace_s)
        finally:
            self._signal(signal.SIGKILL)  # the group: a child left behind (tritonserver) or the server itself
            proc.wait()
            if self._own_log:
                self.log.unlink(missing_ok=True)
        return proc.returncode

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)  # its own session: the group id is its pid


def cloud_edgekit(venv: str | Path) -> Path:
    """``edgekit`` of the cloud venv (``pip install "edgekit[cloud]"`` there), checked to import PyTriton."""
    venv = Path(venv).expanduser()
    exe, python = venv / "bin" / "edgekit", venv / "bin" / "python"
    hint = (f'make one: python3 -m venv {venv} && {venv}/bin/pip install torch==2.13.0 && '
            f'{venv}/bin/pip install ".[cloud]" (README, "The cloud model on Triton"; make demo-triton does it)')
    if not exe.is_file() or not python.is_file():
        raise ConfigError(f"{venv} is not a venv with edgekit installed (no bin/edgekit)", hint=hint)
    probe = subprocess.run([str(python), "-c", "import pytriton.triton"], check=False, capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise ConfigError(f"{venv} cannot import nvidia-pytriton ({last})", hint=hint)
    return exe


def triton_cloud_argv(edgekit: Path, model_dir: Path, model_name: str, *, dynamic_batching: bool = True,
                      max_batch_size: int = 64, queue_delay_us: int = 500, metrics: bool = False) -> list[str]:
    """``edgekit serve-cloud MODEL_DIR --engine triton`` on 127.0.0.1, free ports."""
    argv = [str(edgekit), "serve-cloud", str(model_dir), "--engine", "triton", "--port", "0",
            "--model-name", model_name, "--triton-max-batch-size", str(max_batch_size)]
    argv += ["--triton-queue-delay-us", str(queue_delay_us)] if dynamic_batching else ["--no-triton-dynamic-batching"]
    return argv + (["--metrics-port", "0"] if metrics else [])


_TRITON_COUNTERS = {
    "nv_inference_request_success": "requests",
    "nv_inference_count": "inferences",  # texts (every request carries its batch dimension)
    "nv_inference_exec_count": "executions",  # model calls: batches
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_infer_duration_us": "compute_us",
    "nv_inference_request_duration_us": "request_us",
}


def triton_stats(metrics_url: str, model_name: str, *, timeout_s: float = 10.0) -> dict[str, float]:
    """The model's cumulative counters from Triton's Prometheus endpoint: ``requests``, ``inferences``
    (texts), ``executions`` (model calls), ``queue_us``, ``compute_us``, ``request_us``."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:
            body = response.read().decode()
    except OSError as exc:
        raise EdgekitError(f"cannot read Triton's metrics at {metrics_url}: {exc}") from exc
    stats = dict.fromkeys(_TRITON_COUNTERS.values(), 0.0)
    for family in text_string_to_metric_families(body):
        if family.name not in _TRITON_COUNTERS:
            continue
        for sample in family.samples:  # a counter's value: "<name>_total" (the parser adds it) or "<name>"
            if sample.name in (family.name, family.name + "_total") and sample.labels.get("model") == model_name:
                stats[_TRITON_COUNTERS[family.name]] += sample.value
    return stats


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread meanwhile (their default action
    ends the process without running ``finally``: the child servers would outlive it)."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():  # signal handlers live there only
        yield
        return
    sigs = (signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, interrupt) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
