from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekit import __version__
from edgekit.cli import cli, main


def test_help_and_version():
    runner = CliRunner()
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0 and "finetune" in result.output
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_bad_data_is_one_line_error_and_nonzero_exit(tmp_path, capsys):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\n{"txt": "b", "label": "y"}\n')
    try:
        main(["finetune", "--train", str(bad), "--validation", str(bad), "--out", str(tmp_path / "m")])
    except SystemExit as exc:
        code = exc.code
    else:  # pragma: no cover - the command must fail
        code = 0
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3  # DataError
    assert err == [f"Error: {bad}:2: missing text field 'text' (fields: txt, label)"]
    assert not (tmp_path / "m").exists()


def test_real_subprocess_usage_error(tmp_path):
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("edgekit")), "finetune", "--train", "x.jsonl"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert "Missing option '--validation'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_base_model_dir_is_clear(tmp_path, small_splits):
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("edgekit")), "finetune", "--train", str(small_splits["train"]),
         "--validation", str(small_splits["validation"]), "--out", str(tmp_path / "m"), "--base", str(tmp_path / "nope")],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert proc.returncode == 5, proc.stderr
    assert proc.stderr.strip().splitlines()[0].startswith("Error: ")
    assert "is not a Hugging Face model directory" in proc.stderr
    assert "Traceback" not in proc.stderr
    json.dumps(proc.stderr)


def test_serve_passes_cloud_max_inflight_to_the_cascade(monkeypatch, converted):
    """`serve --cloud-max-inflight N` reaches the cascade settings of the server it starts."""
    import edgekit.cli.serve as serve_cli

    seen = {}

    def fake_serve(model, settings, **kwargs):
        seen["inflight"] = settings.cascade.max_cloud_inflight
        model.close()

    monkeypatch.setattr(serve_cli, "_serve", fake_serve)
    bundle = next(b for b in converted.bundles if b.name == "onnx-int8")
    for args, expected in (([], 4), (["--cloud-max-inflight", "32"], 32)):
        result = CliRunner().invoke(cli, ["serve", str(bundle), "--port", "0", *args])
        assert result.exit_code == 0, result.output
        assert seen.pop("inflight") == expected
    result = CliRunner().invoke(cli, ["serve", str(bundle), "--cloud-max-inflight", "0"])
    assert result.exit_code != 0 and "--cloud-max-inflight" in result.output


def test_serve_passes_the_fast_lane_choice_to_the_server_and_to_its_workers(monkeypatch, converted):
    """`--no-fast-lane` reaches the server's settings, and the argv of each `--workers` process
    (the off side of a flag pair, which the workers' argv once dropped as "not given")."""
    import edgekit.cli.serve as serve_cli
    import edgekit.runtime.workers as workers

    seen = {}

    def fake_serve(model, settings, **kwargs):
        seen["fast_lane"] = settings.fast_lane
        model.close()

    def fake_workers(worker_argv, n, **kwargs):
        seen["argv"] = worker_argv(1234, 0)
        return 0

    monkeypatch.setattr(serve_cli, "_serve", fake_serve)
    monkeypatch.setattr(workers, "serve_workers", fake_workers)
    bundle = str(next(b for b in converted.bundles if b.name == "onnx-int8"))
    for args, expected in (([], True), (["--no-fast-lane"], False), (["--fast-lane"], True)):
        result = CliRunner().invoke(cli, ["serve", bundle, "--port", "0", *args])
        assert result.exit_code == 0, result.output
        assert seen.pop("fast_lane") is expected
    for args, passed in (([], []), (["--no-fast-lane"], ["--no-fast-lane"]), (["--fast-lane"], ["--fast-lane"])):
        result = CliRunner().invoke(cli, ["serve", bundle, "--workers", "2", "--max-batch-size", "4", *args])
        assert result.exit_code == 0, result.output
        argv = seen.pop("argv")
        assert [a for a in argv if "fast-lane" in a] == passed, argv
        assert argv[argv.index("--max-batch-size") + 1] == "4" and argv[-2:] == ["--port", "1234"]


def test_serve_workers_split_the_engine_cpus_one_group_per_worker(monkeypatch, converted):
    """`--workers 2 --engine-cpus 2-4` on a 5-CPU machine: worker 0's engine on 2,3, worker 1's on 4,
    one engine thread each (the smaller group), every worker told all the engines' CPUs (its other
    threads keep off them); --threads 2 does not fit the one-CPU group and is refused in one line."""
    import os

    import edgekit.runtime.workers as workers
    from edgekit.runtime.affinity import RESERVED_CPUS_ENV

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4}, raising=False)
    monkeypatch.setattr(os, "sched_setaffinity", lambda pid, cpus: None, raising=False)
    seen = {}

    def fake_workers(worker_argv, n, **kwargs):
        seen["argv"] = [worker_argv(1234, i) for i in range(n)]
        seen["env"] = kwargs["env"]
        return 0

    monkeypatch.setattr(workers, "serve_workers", fake_workers)
    bundle = str(next(b for b in converted.bundles if b.name == "onnx-int8"))
    result = CliRunner().invoke(cli, ["serve", bundle, "--workers", "2", "--engine-cpus", "2-4"])
    assert result.exit_code == 0, result.output
    first, second = seen["argv"]
    assert first[first.index("--engine-cpus") + 1] == "2,3" and second[second.index("--engine-cpus") + 1] == "4"
    assert first.count("--engine-cpus") == 1 and first[first.index("--threads") + 1] == "1"
    assert seen["env"] == {RESERVED_CPUS_ENV: "2,3,4"}
    result = CliRunner().invoke(cli, ["serve", bundle, "--workers", "2", "--engine-cpus", "2-4", "--threads", "2"])
    assert result.exit_code != 0 and "--threads 2 needs as many CPUs per worker" in str(result.exception)


@pytest.mark.parametrize(("args", "message"), [
    (["--engine-cpus", "1", "--workers", "2"], "--engine-cpus names 1 CPU(s) for 2 workers"),
    (["--engine-cpus", "1", "--max-batch-size", "1"], "--engine-cpus needs micro-batching"),
    (["--engine-cpus", "one"], "'one' is not a CPU list"),
    (["--engine-cpus", "100000"], "CPU 100000 is not available to this process"),
])
def test_serve_refuses_engine_cpus_it_cannot_honour_in_one_line(tmp_path, capsys, args, message):
    """Checked before any model loads or thread moves (the test's own process stays unpinned)."""
    import os

    if "not available" in message and not hasattr(os, "sched_setaffinity"):
        pytest.skip("CPU affinity is Linux-only (elsewhere --engine-cpus is refused as not implemented)")
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    with pytest.raises(SystemExit) as exc:
        main(["serve", str(tmp_path), "--port", "0", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code != 0 and len(err) == 1 and message in err[0], err
    if before is not None:
        assert os.sched_getaffinity(0) == before
