"""The converter pipeline (``edgekit convert``): distil, quantize, export, evaluate, calibrate.

Needs the ``convert`` extra (torch, transformers, optimum, nncf, litert-torch). Nothing is
imported here: each step imports its heavy libraries when it runs.
"""

from __future__ import annotations

import logging

__all__ = ["quiet_third_party"]


def quiet_third_party() -> None:
    """Silence import-time warnings of torch/torchao that say nothing to an edgekit user.

    transformers imports torchao whenever it is installed (litert-torch brings it), and torchao
    warns about CUDA kernels and deprecated pytree registrations through torch's own log
    handlers, which torch configures at import: so import torch first, then lower them.
    """
    import torch  # noqa: F401

    for name in ("torch.utils._pytree", "torchao", "torchao.kernel.intmm"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:  # nncf prints its own progress bars and statistics tables to stdout unless told not to
        import nncf

        nncf.set_log_level(logging.WARNING)
    except ImportError:
        pass
