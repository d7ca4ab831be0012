"""The converter pipeline (``edgekit convert``): distil, quantize, export, evaluate, calibrate.

Needs the ``convert`` extra (torch, transformers, optimum, nncf, litert-torch). Nothing is
imported here: each step imports its heavy libraries when it runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["native_stderr_captured", "quiet_third_party"]


def _verbose() -> bool:
    """Did the user ask for -v (the edgekit logger at INFO or below)?"""
    return logging.getLogger("edgekit").isEnabledFor(logging.INFO)


@contextlib.contextmanager
def native_stderr_captured(enabled: bool | None = None) -> Iterator[None]:
    """Hold what native code writes to file descriptor 2 inside the block; show it only if the block fails.

    TensorFlow Lite and absl write start-up lines from C++ straight to fd 2 ("All log messages
    before absl::InitializeLog() ...", oneDNN notices, "Created TensorFlow Lite XNNPACK
    delegate"), past TF_CPP_MIN_LOG_LEVEL and Python's logging, so no library setting silences
    them: this swaps fd 2 for a temporary file (hand-written: contextlib.redirect_stderr only
    swaps Python's sys.stderr). ``enabled=None``: unless -v.
    """
    if enabled is None:
        enabled = not _verbose()
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            held.seek(0)
            os.write(2, held.read()[-20000:])
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def quiet_third_party(verbose: bool | None = None) -> None:
    """Silence third-party start-up lines and progress bars that say nothing to an edgekit user.

    transformers imports torchao whenever it is installed (litert-torch brings it), and torchao
    warns about CUDA kernels and deprecated pytree registrations through torch's own log
    handlers, which torch configures at import: so import torch first, then lower them.
    TensorFlow's C++ start-up lines (oneDNN notices, CPU feature lines) obey TF_CPP_MIN_LOG_LEVEL,
    absl's Python logging its verbosity, NNCF's rich progress bars the global rich console, and
    ai-edge-quantizer's tqdm bars are switched off where the TFLite exporter imports it
    (:func:`edgekit.converters.exporters.tflite.quiet_quantizer`). ``verbose`` (``-v``) keeps them all.
    """
    if verbose or (verbose is None and _verbose()):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GLOG_minloglevel", "3")
    import torch  # noqa: F401

    for name in ("torch.utils._pytree", "torchao", "torchao.kernel.intmm"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:  # nncf prints its own progress bars and statistics tables to stdout unless told not to
        import nncf

        nncf.set_log_level(logging.WARNING)
    except ImportError:
        pass
    try:  # NNCF draws its "Applying Weight Compression" bars on rich's global console
        import rich

        rich.get_console().quiet = True
    except ImportError:
        pass
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass
