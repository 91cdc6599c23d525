"""`mixprec server --http-listen` as a real process: the dashboard answers, and a SIGTERM stops the server
even while a browser holds a live event stream open."""

from __future__ import annotations

import subprocess
import threading
import urllib.request

from processes import ENV, MIXPREC, ControlPlaneProc

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
