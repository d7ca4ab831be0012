"""Layers that only point down, read from every import statement (module level and lazy ones).

    cli, demo          the face: may import anything; nothing imports it
    bench              the bench wing: core, runtime, converters (the teacher row only)
    converters         conversion and training: core, runtime (artifacts are measured through the
                       runtime that will serve them, by design)
    runtime            the edge: core only (never converters, torch or transformers)
    core               errors, manifest, registry, data, metrics, deps, cache, ...: nothing above it

The checker is tested on a reversed import too, so the contract can fail.
"""

from __future__ import annotations

import ast

from tests.conftest import REPO

PACKAGES = {"edgekit": REPO / "edgekit", "edgekit.converters": REPO / "converters", "edgekit.runtime": REPO / "runtime"}
ALLOWED = {
    "core": {"core"},
    "runtime": {"core", "runtime"},
    "converters": {"core", "runtime", "converters"},
    "bench": {"core", "runtime", "converters", "bench"},
    "face": {"core", "runtime", "converters", "bench", "face"},
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[:2] == ["edgekit", "runtime"]:
        return "runtime"
    if parts[:2] == ["edgekit", "converters"]:
        return "converters"
    if parts[:2] == ["edgekit", "bench"]:
        return "bench"
    if parts[:2] in (["edgekit", "cli"], ["edgekit", "demo"], ["edgekit", "__main__"]):
        return "face"
    return "core"


def imported_modules(source: str, module: str) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = module.split(".")[: -node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
            out += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]  # "from edgekit import cli"
    return [(line, name) for line, name in out if name == "edgekit" or name.startswith("edgekit.")]


def violations(module: str, source: str) -> list[str]:
    here = layer_of(module)
    found = []
    for line, target in imported_modules(source, module):
        if target in ("edgekit", "edgekit.__version__"):
            continue
        there = layer_of(target)
        if there not in ALLOWED[here]:
            found.append(f"{module}:{line} ({here}) imports {target} ({there})")
    return found


def _modules():
    for package, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            if package == "edgekit" and rel.parts and rel.parts[0] in ("converters", "runtime"):
                continue
            if "grpc" in rel.parts and path.name.endswith(("_pb2.py", "_pb2_grpc.py")):
                continue  # generated
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([package, *parts]), path


def test_every_import_points_down():
    found = [v for module, path in _modules() for v in violations(module, path.read_text(encoding="utf-8"))]
    assert not found, "\n".join(found)


def test_the_checker_catches_reversed_imports():
    assert violations("edgekit.manifest", "from edgekit.cli import main\n")
    assert violations("edgekit.runtime.cascade", "def f():\n    from edgekit.converters.training.distill import distill\n")
    assert violations("edgekit.converters.pipeline", "import edgekit.cli._options\n")
    assert violations("edgekit.runtime.model", "from edgekit import bench\n")
    assert not violations("edgekit.runtime.model", "from edgekit.manifest import Manifest\n")
