"""The matplotlib plumbing the convert report and the bench results share (a headless backend, one
way to label and write a figure). matplotlib is imported when a plot is made, never at import."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["pyplot", "save_figure"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display); ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, ax: Any, path: Path, *, xlabel: str, ylabel: str, title: str, dpi: int,
                legend: bool = False) -> None:
    """Label ``ax``, add a small legend if asked, write ``fig`` to ``path`` at ``dpi`` and close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if legend:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
