"""The package's shape: light CLI, namespaced subpackages, sorted __all__."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "openvino", "tensorflow", "onnxruntime", "grpc")


def _run(code: str, cwd) -> str:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True).stdout


def test_cli_help_imports_nothing_heavy(tmp_path):
    out = _run(
        "import sys, json, io, contextlib\n"
        "from edgekit.cli import cli\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try:\n"
        "        cli.main(args=['--help'], prog_name='edgekit', standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
        "print(json.dumps('finetune' in buf.getvalue()))\n",
        tmp_path,
    )
    heavy, listed = out.splitlines()[-2:]
    assert json.loads(heavy) == []
    assert json.loads(listed) is True


def test_subpackages_import_by_their_edgekit_names(tmp_path):
    out = _run(
        "import edgekit.converters, edgekit.runtime, edgekit.runtime.types\n"
        "import importlib.util as u\n"
        "print(u.find_spec('converters') is None, u.find_spec('runtime') is None)\n",
        tmp_path,  # outside the repository: its root is not on sys.path
    )
    assert out.split() == ["True", "True"]


def test_runtime_types_import_without_torch(tmp_path):
    out = _run(
        "import sys, edgekit.runtime.types, edgekit.manifest, edgekit.data, edgekit.metrics\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n",
        tmp_path,
    )
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize(
    "module", ["edgekit.errors", "edgekit.manifest", "edgekit.data", "edgekit.metrics", "edgekit.registry", "edgekit.runtime.types"]
)
def test_all_is_sorted_and_real(module):
    mod = importlib.import_module(module)
    assert list(mod.__all__) == sorted(mod.__all__)
    for name in mod.__all__:
        assert hasattr(mod, name), name
