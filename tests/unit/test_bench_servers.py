"""The ready line the benchmarks' ServerProcess waits for, from every kind of server it starts."""

from __future__ import annotations

import pytest

from edgekit.bench.servers import _METRICS, _SERVING


@pytest.mark.parametrize(("line", "name", "host", "port"), [
    ("serving b77-onnx-int8 (onnx/int8, backend onnxruntime) on 127.0.0.1:52527", "b77-onnx-int8", "127.0.0.1", "52527"),
    # serve --workers N (the overhead benchmark's workers-N mode waited 300 s for this one and failed)
    ("serving b77-onnx-int8 (onnx/int8, backend onnxruntime) on 127.0.0.1:52527 (2 workers, pids 10706, 10719)",
     "b77-onnx-int8", "127.0.0.1", "52527"),
    ("serving echo (bare gRPC) on 127.0.0.1:41000", "echo", "127.0.0.1", "41000"),
    ("serving cloud (torch) on [::1]:50051", "cloud", "[::1]", "50051"),
])
def test_the_ready_line_gives_name_host_and_port(line, name, host, port):
    match = _SERVING.search(f"some log line\n{line}\nmetrics on http://127.0.0.1:9/metrics\n")
    assert match is not None and match.groups() == (name, host, port)


def test_a_line_that_only_mentions_serving_is_not_ready():
    assert _SERVING.search("serving soon, loading the model from /tmp/x on disk") is None


@pytest.mark.parametrize("line", ["metrics on http://127.0.0.1:42605/metrics",
                                  "metrics on http://127.0.0.1:42605/metrics (summed over the workers)",
                                  "metrics on https://127.0.0.1:42605/metrics"])
def test_the_metrics_line_gives_the_url(line):
    match = _METRICS.search(f"serving x (y) on 127.0.0.1:1\n{line}\n")
    assert match is not None and match.group(1) == line.split()[2]


def test_host_steal_is_the_share_of_wanted_cpu_time_given_to_other_guests():
    from edgekit.bench.overhead import steal_pct

    before = [100, 0, 50, 1000, 5, 0, 0, 10]  # user nice system idle iowait irq softirq steal
    # 60 user + 20 system + 20 steal ticks wanted: 20%; idle and iowait are not wanted time
    assert steal_pct(before, [160, 0, 70, 5000, 9, 0, 0, 30]) == 20.0
    assert steal_pct(before, [160, 0, 70, 5000, 9, 0, 0, 10]) == 0.0  # bare metal, or an idle host
    assert steal_pct(before, before) is None  # nothing ran: no share to give
    assert steal_pct(None, before) is None and steal_pct(before, None) is None  # not Linux


def test_the_host_cpu_reading_is_eight_counters_that_never_fall():
    from edgekit.bench.overhead import _host_cpu_ticks

    first = _host_cpu_ticks()
    if first is None:
        pytest.skip("no /proc/stat here (not Linux)")
    sum(i * i for i in range(200_000))  # some CPU time between the two readings
    second = _host_cpu_ticks()
    assert len(first) == len(second) == 8
    assert all(b >= a for a, b in zip(first, second)) and sum(second) >= sum(first)


def test_the_one_client_rounds_visit_every_subject_in_changing_order():
    """Not a rotation: there each subject always came right after the same other one, and the one
    after the slowest paid for it (issue 12, session 13)."""
    from edgekit.bench.overhead import round_orders

    names = ["in-process", "grpc-echo", "bare-model", "default", "wait-2ms"]
    orders = list(round_orders(names, 200))
    assert len(orders) == 200 and all(sorted(order) == sorted(names) for order in orders)
    after_slowest = {order[order.index("wait-2ms") + 1] for order in orders if order[-1] != "wait-2ms"}
    assert after_slowest == set(names) - {"wait-2ms"}  # everyone follows it some of the time
    assert orders == list(round_orders(names, 200))  # seeded: every run the same orders
    assert orders != list(round_orders(names, 200, seed=13))


def test_an_unknown_server_mode_is_refused_before_anything_starts(tmp_path):
    from edgekit.bench.overhead import run_overhead
    from edgekit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown server mode\(s\) \['turbo'\]"):
        run_overhead(tmp_path / "no-bundle", ["a text"], modes=["default", "turbo"])


def test_an_unknown_reference_server_is_refused_before_anything_starts(tmp_path):
    from edgekit.bench.overhead import run_overhead
    from edgekit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown reference server\(s\) \['bare-modle'\]"):
        run_overhead(tmp_path / "no-bundle", ["a text"], references=["bare-modle"])
