"""`mixprec server --http-listen` as a real process: the dashboard answers, and a SIGTERM stops the server
even while a browser holds a live event stream open."""

from __future__ import annotations

import ssl
import subprocess
import threading
import urllib.request

import trustme
from processes import ENV, MIXPREC, ControlPlaneProc
from support import RunningControlPlane

from mixprec.localhost import free_port, wait_until
from mixprec.v1 import policy_pb2 as pb


def test_the_server_serves_the_dashboard_and_stops_with_a_stream_open(tmp_path):
    http = f"127.0.0.1:{free_port()}"
    plane = ControlPlaneProc(f"sqlite:///{tmp_path / 'cp.db'}", tmp_path, None, "--http-listen", http)
    try:
        plane.policies.CreateEndpoint(pb.CreateEndpointRequest(name="ranker", layers=["layers.0.mlp.up_proj"]))
        page = urllib.request.urlopen(urllib.request.Request(f"http://{http}/", headers={"Accept": "text/html"}),
                                      timeout=10)
        html = page.read().decode()
        assert page.status == 200 and 'href="/endpoints/ranker"' in html
        assert f"dashboard on http://{http}/" in plane.log()

        first_event = threading.Event()

        def follow():
            with urllib.request.urlopen(f"http://{http}/events", timeout=30) as stream:
                for line in stream:
                    if line.startswith(b"data:") and b"ranker" in line:
                        first_event.set()

        threading.Thread(target=follow, daemon=True).start()
        wait_until(first_event.is_set, 10, "the overview's first live event", poll=0.05)
    finally:
        assert plane.stop(timeout=20) == 0, plane.log()
    assert "stopped" in plane.log()


def test_a_bad_http_listen_address_is_refused_by_name(tmp_path):
    done = subprocess.run([*MIXPREC, "server", "--db", f"sqlite:///{tmp_path / 'cp.db'}", "--listen",
                           f"127.0.0.1:{free_port()}", "--http-listen", "nowhere"],
                          capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 2 and "--http-listen: 'nowhere' is not HOST:PORT" in done.stderr


def test_under_tls_the_session_cookie_is_secure(tmp_path):
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    running = RunningControlPlane(f"sqlite:///{tmp_path / 'cp.db'}", http_listen="127.0.0.1:0", auth="required",
                                  http_tls=(str(cert), str(key)))
    try:
        url = running.plane.dashboard.url
        assert url.startswith("https://")
        context = ssl.create_default_context()
        ca.configure_trust(context)
        page = urllib.request.urlopen(url + "login", context=context, timeout=10)
        cookie = page.headers["set-cookie"]
        assert page.status == 200 and "mixprec_session=" in cookie
        assert all(flag in cookie for flag in ("HttpOnly", "Secure", "SameSite=strict")), cookie
    finally:
        running.stop()
