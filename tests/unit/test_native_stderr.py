"""Native start-up lines written to fd 2 are held during export/measure, and shown if the step fails."""

from __future__ import annotations

import logging
import os

import pytest

from edgekit.converters import native_stderr_captured


@pytest.fixture
def quiet_edgekit_logger():
    logger = logging.getLogger("edgekit")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield logger
    logger.setLevel(level)


def test_held_when_the_block_succeeds(capfd, quiet_edgekit_logger) -> None:
    with native_stderr_captured():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_shown_when_the_block_fails(capfd, quiet_edgekit_logger) -> None:
    with pytest.raises(RuntimeError), native_stderr_captured():
        os.write(2, b"F0000 converter.cc:1] the real reason\n")
        raise RuntimeError("export failed")
    assert "the real reason" in capfd.readouterr().err


def test_verbose_keeps_them(capfd, quiet_edgekit_logger) -> None:
    quiet_edgekit_logger.setLevel(logging.INFO)  # -v
    with native_stderr_captured():
        os.write(2, b"oneDNN custom operations are on\n")
    assert "oneDNN" in capfd.readouterr().err
