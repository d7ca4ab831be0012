"""Security (issue 13, point 5): bearer tokens, TLS, mutual TLS, the admin API and the refusal
to listen in plaintext beyond loopback.

How each test was checked to fail: without the AuthInterceptor in ``EdgeServer`` the calls
without a token succeed; with ``TokenFile.reload`` not called on reload the rotated token is
refused; with ``require_client_auth`` off in ``Security.server_credentials`` the client
without a certificate gets through; with ``Security.check`` skipping the loopback rule the
plaintext server on 0.0.0.0 starts.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import grpc
import pytest

from edgekit.errors import ConfigError, EdgekitError
from edgekit.runtime.client import EdgeClient
from edgekit.runtime.grpc import edgekit_pb2 as ek
from edgekit.runtime.grpc import edgekit_pb2_grpc as ek_grpc
from edgekit.runtime.security import Security, TokenFile
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tests.fakes import KeywordModel, serving

trustme = pytest.importorskip("trustme", reason="the TLS tests need trustme (pip install -e '.[dev]')")

TOKEN = "s3cret-token-for-tests"


def _token_file(path: Path, *tokens: str, mode: int = 0o600) -> Path:
    path.write_text("\n".join(tokens) + "\n")
    os.chmod(path, mode)
    return path


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


@pytest.mark.e2e
def test_a_token_is_required_compared_exactly_and_never_logged(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    security = Security(token_file=_token_file(tmp_path / "tokens", TOKEN))
    with serving(KeywordModel(), security=security) as server:
        channel = grpc.insecure_channel(server.address)
        stub = ek_grpc.EdgeClassifierStub(channel)
        request = ek.ClassifyRequest(texts=["cancel it"])
        code, details = _code(lambda: stub.Classify(request, timeout=5))
        assert code == grpc.StatusCode.UNAUTHENTICATED and "missing bearer token" in details
        for wrong in (TOKEN[:-1], TOKEN + "x", "Basic " + TOKEN, ""):
            code, _ = _code(lambda: stub.Classify(request, timeout=5, metadata=(("authorization", f"Bearer {wrong}"),)))
            assert code == grpc.StatusCode.UNAUTHENTICATED
        reply = stub.Classify(request, timeout=5, metadata=(("authorization", f"Bearer {TOKEN}"),))
        assert reply.predictions[0].label == "cancel_order"
        # the health service is behind the token too, unless --health-open
        health = health_pb2_grpc.HealthStub(channel)
        code, _ = _code(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        channel.close()
    assert TOKEN not in caplog.text


@pytest.mark.e2e
def test_health_open_answers_probes_without_a_token_but_nothing_else(tmp_path):
    security = Security(token_file=_token_file(tmp_path / "tokens", TOKEN), health_open=True)
    with serving(KeywordModel(), security=security) as server:
        with EdgeClient(server.address) as anonymous:
            assert anonymous.health() == "SERVING"
            with pytest.raises(EdgekitError, match="UNAUTHENTICATED"):
                anonymous.model_info()


@pytest.mark.e2e
def test_reload_rereads_the_token_file_and_the_admin_api_needs_the_token(tmp_path):
    tokens = _token_file(tmp_path / "tokens", TOKEN)
    versions = iter(["4", "5"])
    with serving(KeywordModel(version="3"), security=Security(token_file=tokens),
                 reloader=lambda: KeywordModel(version=next(versions))) as server:
        with pytest.raises(EdgekitError, match="UNAUTHENTICATED"):
            EdgeClient(server.address).reload()
        with EdgeClient(server.address, token=TOKEN) as admin:
            assert admin.reload().version == "4"
            assert admin.model_info().version == "4"
        _token_file(tokens, "rotated-token")
        server.reload()
        with pytest.raises(EdgekitError, match="UNAUTHENTICATED"):
            EdgeClient(server.address, token=TOKEN).model_info()
        assert EdgeClient(server.address, token="rotated-token").model_info().version == "5"


@pytest.mark.e2e
def test_the_admin_api_is_off_without_a_token_file():
    with serving(KeywordModel(), reloader=KeywordModel) as server:
        with pytest.raises(EdgekitError, match="PERMISSION_DENIED.*--auth-token-file"):
            EdgeClient(server.address).reload()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1, a client certificate it signed, and a stranger's."""
    root = tmp_path_factory.mktemp("pki")
    ca, stranger_ca = trustme.CA(), trustme.CA()
    files = {}
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(str(root / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(root / "server.pem"))
    for name, issuer in (("client", ca), ("stranger", stranger_ca)):
        cert = issuer.issue_cert(f"{name}@shop.example")
        cert.private_key_pem.write_to_path(str(root / f"{name}.key"))
        cert.cert_chain_pems[0].write_to_path(str(root / f"{name}.pem"))
    for name in ("ca.pem", "server.key", "server.pem", "client.key", "client.pem", "stranger.key", "stranger.pem"):
        files[name] = root / name
    return files


@pytest.mark.e2e
def test_tls_serves_clients_that_trust_the_ca_and_refuses_plaintext(pki):
    security = Security(tls_cert=pki["server.pem"], tls_key=pki["server.key"])
    with serving(KeywordModel(), security=security) as server:
        with EdgeClient(server.address, tls_ca=pki["ca.pem"]) as client:
            assert client.classify(["cancel it"])[0].label == "cancel_order"
        with pytest.raises(EdgekitError, match="UNAVAILABLE"):
            EdgeClient(server.address, timeout_s=2).model_info()  # plaintext against TLS


@pytest.mark.e2e
def test_mutual_tls_refuses_clients_without_a_certificate_from_the_ca(pki):
    security = Security(tls_cert=pki["server.pem"], tls_key=pki["server.key"], tls_client_ca=pki["ca.pem"])
    with serving(KeywordModel(), security=security) as server:
        good = EdgeClient(server.address, tls_ca=pki["ca.pem"], tls_cert=pki["client.pem"], tls_key=pki["client.key"])
        assert good.classify(["cancel it"])[0].label == "cancel_order"
        good.close()
        for kwargs in ({}, {"tls_cert": pki["stranger.pem"], "tls_key": pki["stranger.key"]}):
            with pytest.raises(EdgekitError, match="UNAVAILABLE"):
                EdgeClient(server.address, tls_ca=pki["ca.pem"], timeout_s=2, **kwargs).model_info()


def test_plaintext_beyond_loopback_is_refused_unless_insecure():
    for host in ("127.0.0.1", "::1", "localhost"):
        Security().check(host)
    with pytest.raises(ConfigError, match="refusing to listen on 0.0.0.0 without TLS"):
        Security().check("0.0.0.0")
    Security(insecure=True).check("0.0.0.0")
    from edgekit.runtime.server import build_server

    model = KeywordModel()
    with pytest.raises(ConfigError, match="refusing"):
        build_server(model, host="0.0.0.0", port=0)
    assert model.closed  # nothing was left running


def test_token_files_must_exist_be_private_and_hold_a_token(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        TokenFile(tmp_path / "missing")
    with pytest.raises(ConfigError, match="chmod 600"):
        TokenFile(_token_file(tmp_path / "open", TOKEN, mode=0o644))
    with pytest.raises(ConfigError, match="holds no token"):
        TokenFile(_token_file(tmp_path / "empty", "  "))
    tokens = TokenFile(_token_file(tmp_path / "two", "old", "new"))  # a rotation: both accepted
    assert tokens.accepts("Bearer old") and tokens.accepts("bearer new") and not tokens.accepts("Bearer other")


@pytest.mark.parametrize("args, message", [
    (["--tls-key", "{key}"], "--tls-key needs --tls-cert too"),
    (["--tls-client-ca", "{key}"], "--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key"),
    (["--auth-token-file", "{missing}"], "does not exist"),
    (["--auth-token-file", "{open}"], "readable or writable by other users"),
    (["--host", "0.0.0.0"], "refusing to listen on 0.0.0.0 without TLS"),
])
def test_bad_security_options_are_one_line_errors(tmp_path, capsys, args, message):
    from edgekit.cli import main

    paths = {"key": tmp_path / "k.pem", "missing": tmp_path / "none", "open": _token_file(tmp_path / "o", "t", mode=0o644)}
    paths["key"].write_text("-----BEGIN PRIVATE KEY-----\n")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", str(bundle), *[a.format(**paths) for a in args]])
    assert exit_info.value.code == 2  # ConfigError
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.e2e
@pytest.mark.parametrize("protocol", ["edgekit", "kserve-v2"])
def test_the_edge_reaches_a_tls_and_token_cloud_on_both_protocols(pki, tmp_path, protocol):
    from edgekit.cli.serve import _cloud_client
    from tests.fakes import UNSURE, cloud_model

    tokens = _token_file(tmp_path / "tokens", TOKEN)
    cloud_security = Security(tls_cert=pki["server.pem"], tls_key=pki["server.key"], token_file=tokens)
    unsure = next(iter(UNSURE))
    with serving(cloud_model(), security=cloud_security) as cloud:
        address = f"127.0.0.1:{cloud.port}"
        model_name = cloud_model().info.name if protocol == "kserve-v2" else None
        for token_file, route in ((tokens, "CLOUD"), (None, "EDGE_CLOUD_FAILED")):
            client = _cloud_client(address, protocol, model_name, tls_ca=pki["ca.pem"], token_file=token_file)
            with serving(KeywordModel(), cloud=client) as edge, EdgeClient(edge.address) as user:
                assert user.classify([unsure])[0].route.value == route


@pytest.mark.e2e
def test_metrics_are_served_over_tls_with_the_grpc_ports_certificate(pki):
    """A TLS server's /metrics is https with the same certificate (it was plaintext next to it)."""
    from edgekit.runtime.monitor_client import read_metrics
    from edgekit.runtime.security import https_context

    security = Security(tls_cert=pki["server.pem"], tls_key=pki["server.key"])
    with serving(KeywordModel(), security=security, metrics_port=0) as server:
        with EdgeClient(server.address, tls_ca=pki["ca.pem"]) as client:
            client.classify(["cancel it"])
        url = server.metrics_url
        assert url == f"https://127.0.0.1:{server.metrics_port}/metrics"
        scrape = read_metrics(url, timeout_s=5, tls=https_context(pki["ca.pem"]))
        assert sum(scrape.samples["edgekit_requests_total"].values()) == 1
        with pytest.raises(EdgekitError, match="cannot read metrics"):
            read_metrics(url.replace("https://", "http://"), timeout_s=5)  # plaintext is not answered
        with pytest.raises(EdgekitError, match="CERTIFICATE_VERIFY_FAILED"):
            read_metrics(url, timeout_s=5)  # the system's CAs do not vouch for the test CA


@pytest.mark.e2e
def test_mutual_tls_metrics_want_a_client_certificate_from_the_ca(pki, capsys):
    from edgekit.cli import main
    from edgekit.runtime.monitor_client import read_metrics
    from edgekit.runtime.security import https_context

    security = Security(tls_cert=pki["server.pem"], tls_key=pki["server.key"], tls_client_ca=pki["ca.pem"])
    with serving(KeywordModel(), security=security, metrics_port=0) as server:
        url = server.metrics_url
        read_metrics(url, timeout_s=5, tls=https_context(pki["ca.pem"], pki["client.pem"], pki["client.key"]))
        for cert in ({}, {"cert": pki["stranger.pem"], "key": pki["stranger.key"]}):
            with pytest.raises(EdgekitError, match="cannot read metrics"):
                read_metrics(url, timeout_s=5, tls=https_context(pki["ca.pem"], **cert))
        # edgekit monitor takes the same client options for an https:// metrics URL (https:// is
        # assumed for a URL without a scheme when TLS options are given)
        argv = ["monitor", "--metrics-url", url.removeprefix("https://"), "--json", "--once", "--interval", "0.1",
                "--tls-ca", str(pki["ca.pem"])]
        for extra, expected in (([], 1), (["--tls-cert", str(pki["client.pem"]), "--tls-key", str(pki["client.key"])], 0)):
            try:
                main([*argv, *extra])
                code = 0
            except SystemExit as exc:
                code = exc.code
            out, err = capsys.readouterr()
            assert code == expected, err
            if expected == 0:
                assert json.loads(out)["queued_texts"] == 0
            else:
                assert err.startswith("Error: cannot read metrics from https://") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("extra", "message"), [
    (["--metrics-url", "http://127.0.0.1:9/metrics", "--tls-ca", "CA"], "plain http"),
    (["--metrics-url", "127.0.0.1:9/metrics", "--token-file", "TOKENS"], "--token-file applies to --server"),
])
def test_monitor_options_that_would_apply_to_nothing_are_refused(pki, tmp_path, capsys, extra, message):
    from edgekit.cli import main

    files = {"CA": str(pki["ca.pem"]), "TOKENS": str(_token_file(tmp_path / "tokens", TOKEN))}
    with pytest.raises(SystemExit) as exit_info:
        main(["monitor", "--once", "--json", *[files.get(arg, arg) for arg in extra]])
    assert exit_info.value.code == 2  # a configuration error, before anything is read
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_the_summed_metrics_of_serve_workers_use_the_workers_tls(pki, tmp_path):
    from edgekit.runtime.monitor_client import read_metrics
    from edgekit.runtime.security import https_context
    from edgekit.runtime.workers import _serve_metrics

    security = Security(tls_cert=pki["server.pem"], tls_key=pki["server.key"])
    httpd = _serve_metrics("127.0.0.1", 0, str(tmp_path), security)
    try:
        url = f"https://127.0.0.1:{httpd.server_port}/metrics"
        assert read_metrics(url, timeout_s=5, tls=https_context(pki["ca.pem"])).samples == {}  # no worker wrote yet
        with pytest.raises(EdgekitError, match="cannot read metrics"):
            read_metrics(url.replace("https://", "http://"), timeout_s=5)
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.e2e
def test_an_idle_connection_stops_neither_https_metrics_nor_shutdown(pki):
    """A client that connects to /metrics and says nothing (a port scanner) must not hold up the
    next scrape, nor SIGTERM's shutdown. Checked to fail: prometheus_client's own TLS server
    (start_http_server with certfile) handshakes in its accept loop, and both then time out."""
    import socket
    import time

    from edgekit.runtime.monitor_client import read_metrics
    from edgekit.runtime.security import https_context

    security = Security(tls_cert=pki["server.pem"], tls_key=pki["server.key"])
    with serving(KeywordModel(), security=security, metrics_port=0) as server:
        idle = socket.create_connection(("127.0.0.1", server.metrics_port))
        try:
            read_metrics(server.metrics_url, timeout_s=3, tls=https_context(pki["ca.pem"]))
            started = time.monotonic()
            server.stop(grace_s=0)
            assert time.monotonic() - started < 3
        finally:
            idle.close()
