"""The converter pipeline (``edgekit convert``): distil, quantize, export, evaluate, calibrate.

Needs the ``convert`` extra (torch, transformers, optimum, nncf, litert-torch). Nothing is
imported here: each step imports its heavy libraries when it runs.
"""

from __future__ import annotations

import logging
import os

__all__ = ["quiet_third_party"]


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
    if verbose:
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
