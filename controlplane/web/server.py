"""The dashboard's HTTP server: uvicorn, in the control plane's own event loop beside grpc.aio."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

import uvicorn

from controlplane.auth import Principal
from controlplane.web.access import Access
from controlplane.web.app import Dashboard
from controlplane.web.live import Live
from controlplane.web.pages import Pages
from mixprec.errors import FieldError, InvalidArgument


def parse_listen(listen: str, field_name: str = "--http-listen") -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument(FieldError(field_name, f"{listen[:100]!r} is not HOST:PORT (e.g. 127.0.0.1:8080)"))
    return host, int(port)


class _EmbeddedServer(uvicorn.Server):
    """Leaves SIGINT/SIGTERM to the control plane, which stops this server when it stops."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class HttpServer:
    def __init__(self, app, listen: str, certfile: str | None = None, keyfile: str | None = None):
        self.host, self.port = parse_listen(listen)
        # log_config=None: uvicorn's records go to the process's own handler (mixprec.logs), which shows
        # the control characters a request path or header may carry as escapes.
        self._config = uvicorn.Config(
            app, lifespan="off", log_level="warning", log_config=None, access_log=False, ws="none",
            proxy_headers=False,
            server_header=False, timeout_graceful_shutdown=2, ssl_certfile=certfile, ssl_keyfile=keyfile,
        )
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None

    @property
    def scheme(self) -> str:
        return "https" if self._config.ssl_certfile else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/"

    async def start(self) -> int:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as err:
            sock.close()
            raise OSError(f"the dashboard cannot listen on {self.host}:{self.port}: {err.strerror}") from None
        self.port = sock.getsockname()[1]
        self._server = _EmbeddedServer(self._config)
        self._task = asyncio.ensure_future(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError("the dashboard's HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        return self.port

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        await asyncio.gather(self._task, return_exceptions=True)
        self._server = None


class DashboardServer:
    """The dashboard over one control plane's services: its HTTP server, sessions and live regions."""

    def __init__(self, pages: Pages, changed: Callable[[str], Awaitable[object]], listen: str,
                 authenticate: Callable[[str], Principal] | None = None, certfile: str | None = None,
                 keyfile: str | None = None, interval: float = 0.5):
        self.live = Live(interval)
        self.dashboard = Dashboard(pages, Access(authenticate), changed, self.live)
        self.http = HttpServer(self.dashboard.app, listen, certfile, keyfile)

    @property
    def url(self) -> str:
        return self.http.url

    @property
    def auth_required(self) -> bool:
        return self.dashboard.access.required

    async def start(self) -> int:
        return await self.http.start()

    async def stop(self) -> None:
        self.live.close()  # ends the open event streams, so that the server need not wait for them
        await self.http.stop()
