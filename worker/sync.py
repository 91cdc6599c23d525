"""The agent's side of AgentService.Connect: hello, apply assignments, ACK/NACK, reports, reconnect.

Pure asyncio and gRPC, no torch: the real worker plugs its engine in as the `apply` callable and
the benchmark's simulated agents plug in a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import grpc

from mixprec import transport
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc
from worker.credentials import IssuedToken
from worker.state import AppliedAssignment, StateStore

log = logging.getLogger(__name__)

# (version, precision map) -> None; raise to refuse (NACK) the assignment.
ApplyFn = Callable[[int, dict[str, str]], Awaitable[None]]
# Called after each apply; must return at once (long work such as evaluation goes to a task).
AppliedFn = Callable[[int, dict[str, str]], Awaitable[None]]
# The control plane asks for a quality report this worker no longer has: measure it again.
ReportRequestedFn = Callable[[int], None]

KEPT_QUALITY_REPORTS = 8  # versions whose latest quality report is kept for resending

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]

ACCEPTED_KEY = "mixprec-accepted"
ISSUED_TOKEN_KEY = "mixprec-worker-token"  # a bootstrap token's hello was answered with this worker's own token

# Codes after which retrying the same hello cannot succeed until someone acts.
FATAL = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND,
         grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


@dataclass
class Backoff:
    """Jittered exponential backoff ("full jitter"): a fleet reconnecting at once spreads out."""

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * self.multiplier**self.attempt)
        self.attempt += 1
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class AgentIdentity:
    endpoint: str
    worker_id: str
    layers: list[str]
    model: str = ""
    hardware: apb.Hardware = field(default_factory=apb.Hardware)
    inference_address: str = ""


class SyncLoop:
    def __init__(
        self,
        server: str,
        identity: AgentIdentity,
        apply: ApplyFn,
        state: StateStore | None = None,
        on_applied: AppliedFn | None = None,
        backoff: Backoff | None = None,
        on_report_requested: ReportRequestedFn | None = None,
        token: str | None = None,
        tls_ca: str | None = None,
        tls_client: tuple[str, str] | None = None,
        issued: IssuedToken | None = None,
    ):
        self.server = server
        self._token = token  # an agent token scoped to this endpoint (MIXPREC_TOKEN), or a bootstrap token
        self._issued = issued  # where the token a bootstrap token issued this worker is kept
        self.issued_token: str | None = issued.load() if issued else None
        self._tls_ca = tls_ca
        self._tls_client = tls_client or (None, None)  # (certificate, key) for mutual TLS
        self.identity = identity
        self._apply = apply
        self._state = state
        self._on_applied = on_applied
        self._on_report_requested = on_report_requested
        # The latest quality report per applied version, and the versions whose report the control
        # plane has not acknowledged yet: those are sent again on every (re)connect.
        self._quality: dict[int, apb.Report] = {}
        self._unacked: set[int] = set()
        self._backoff = backoff or Backoff()
        self._outbox: asyncio.Queue[apb.AgentMessage] | None = None
        self.version = 0
        self.precision_map: dict[str, str] | None = None
        self.connected = asyncio.Event()
        self.applied_count = 0
        self.last_error = ""
        self.fatal_error: grpc.RpcError | None = None

    async def restore(self) -> AppliedAssignment | None:
        """Apply the assignment saved by a previous run, before any control plane answers.

        A damaged state file costs one log line and the last good copy (or base precision), never the worker.
        """
        if self._state is None:
            return None
        saved, problem = self._state.load_last_good()
        if saved is not None and saved.endpoint == self.identity.endpoint:
            try:
                await self._apply(saved.version, saved.precision_map)
            except Exception as err:  # noqa: BLE001 - a map this model cannot run is damage too
                problem, saved = f"state file {self._state.path} holds a map this worker cannot apply ({err})", None
        else:
            saved = None
        if problem:
            log.error("%s; starting at %s", problem, f"the last good copy (v{saved.version})" if saved else
                      "base precision")
        if saved is not None:
            self.version, self.precision_map = saved.version, saved.precision_map
            log.info("restored v%d from %s", saved.version, self._state.path)
        return saved

    def report(self, report: apb.Report) -> None:
        """Send a report. Quality reports are kept and sent again on every reconnect until the control
        plane acknowledges them; serving reports are dropped when no stream is up (the next window
        carries fresher numbers)."""
        if not report.report_id:  # one id per measurement: resends of it are stored once
            report.report_id = uuid.uuid4().hex
        if report.kind == apb.Report.QUALITY:
            self._quality[report.version] = report
            self._unacked.add(report.version)
            for old in sorted(self._quality)[:-KEPT_QUALITY_REPORTS]:
                del self._quality[old]
                self._unacked.discard(old)
        if self._outbox is not None and self.connected.is_set():
            self._outbox.put_nowait(apb.AgentMessage(report=report))

    def _acknowledged(self, ack: apb.ReportAck) -> None:
        kept = self._quality.get(ack.version)
        # An ACK of an older measurement of this version leaves the newer one to be sent again.
        if ack.kind == apb.Report.QUALITY and kept is not None and ack.report_id in ("", kept.report_id):
            self._unacked.discard(ack.version)

    @property
    def unacknowledged_reports(self) -> list[int]:
        return sorted(self._unacked)

    def _report_requested(self, version: int) -> None:
        kept = self._quality.get(version)
        if kept is not None:
            self.report(kept)
        elif version == self.version and self._on_report_requested is not None:
            self._on_report_requested(version)

    async def run(self) -> None:
        """Keep a stream up until cancelled; reconnect after errors and after a clean end of stream."""
        failures = 0  # sessions in a row that ended in an unexpected exception
        while True:
            try:
                await self._session()
                log.info("control plane ended the stream; reconnecting")
                failures = 0
            except grpc.aio.AioRpcError as err:
                failures = 0
                self.last_error = f"{err.code().name}: {err.details()}"
                if err.code() == grpc.StatusCode.UNAUTHENTICATED and self.issued_token:
                    # Revoked (an admin took the id over): the next try asks the bootstrap token again.
                    log.error("this worker's own token was refused (%s); falling back to MIXPREC_TOKEN", err.details())
                    self.issued_token = None
                    if self._issued is not None:
                        self._issued.discard()
                if err.code() in FATAL:
                    log.error("control plane refused this worker: %s", self.last_error)
                    self.fatal_error = err
                log.warning("stream to %s failed (%s)", self.server, self.last_error)
            except Exception as err:  # noqa: BLE001 - a bug or a bad value must not end sync for good
                failures += 1
                # The backoff grows with each failure in a row, even where a connect in between reset it.
                self._backoff.attempt = max(self._backoff.attempt, failures - 1)
                self.last_error = f"{type(err).__name__}: {err}"
                log.exception("sync with %s failed (%s); starting over after a backoff", self.server,
                              self.last_error)
            finally:
                self.connected.clear()
                self._outbox = None
            delay = self._backoff.next_delay()
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        outbox: asyncio.Queue[apb.AgentMessage] = asyncio.Queue()
        ident = self.identity
        outbox.put_nowait(
            apb.AgentMessage(
                hello=apb.Hello(
                    endpoint=ident.endpoint, worker_id=ident.worker_id, layers=ident.layers, model=ident.model,
                    hardware=ident.hardware, running_version=self.version,
                    inference_address=ident.inference_address,
                )
            )
        )

        async with transport.aio_channel(self.server, self._tls_ca, CHANNEL_OPTIONS, *self._tls_client) as channel:
            token = self.issued_token or self._token
            call = agent_pb2_grpc.AgentServiceStub(channel).Connect(metadata=transport.token_metadata(token))
            writer = asyncio.ensure_future(self._write(call, outbox))
            try:
                await self._converse(call, outbox)
            finally:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)

    @staticmethod
    async def _write(call, outbox: asyncio.Queue) -> None:
        while True:
            await call.write(await outbox.get())

    async def _converse(self, call, outbox: asyncio.Queue) -> None:
        self._outbox = outbox
        # The control plane sends its initial metadata once it has accepted the hello; a refused
        # hello ends the call with an error status, raised by the iteration below.
        metadata = await call.initial_metadata()
        issued = dict(metadata or ()).get(ISSUED_TOKEN_KEY)
        if issued:  # issued once: kept before anything else, the bootstrap token cannot issue it again
            self.issued_token = issued
            kept = self._issued.keep(issued) if self._issued is not None else "memory only: no state dir"
            log.info("the control plane issued this worker its own token (kept in %s)", kept)
        if metadata is not None and ACCEPTED_KEY in dict(metadata):
            self.connected.set()
            self._backoff.reset()
            for version in sorted(self._unacked):
                outbox.put_nowait(apb.AgentMessage(report=self._quality[version]))
        async for message in call:
            kind = message.WhichOneof("message")
            if kind == "assignment":
                await self._handle(message.assignment, outbox)
            elif kind == "report_ack":
                self._acknowledged(message.report_ack)
            elif kind == "report_request":
                self._report_requested(message.report_request.version)

    async def _handle(self, assignment: apb.Assignment, outbox: asyncio.Queue) -> None:
        precision_map = {lp.layer: lp.precision for lp in assignment.precision_map}
        try:
            await self._apply(assignment.version, precision_map)
        except Exception as err:  # noqa: BLE001 - any failure to apply is this assignment's NACK
            log.warning("refusing v%d: %s", assignment.version, err)
            outbox.put_nowait(apb.AgentMessage(nack=apb.Nack(version=assignment.version, nonce=assignment.nonce,
                                                             error=str(err) or type(err).__name__)))
            return
        self.version, self.precision_map = assignment.version, precision_map
        self.applied_count += 1
        if self._state is not None:
            try:
                self._state.save(AppliedAssignment(self.identity.endpoint, assignment.version, precision_map,
                                                   assignment.nonce))
            except OSError as err:  # serving and syncing go on; only a restart loses the map
                log.error("cannot save v%d to %s (%s); a restart starts without it", assignment.version,
                          self._state.path, err.strerror or err)
        outbox.put_nowait(apb.AgentMessage(ack=apb.Ack(version=assignment.version, nonce=assignment.nonce)))
        log.info("applied v%d (%s)", assignment.version, assignment.reason)
        if self._on_applied is not None:
            await self._on_applied(assignment.version, precision_map)
