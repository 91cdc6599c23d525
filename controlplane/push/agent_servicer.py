"""mixprec.v1.AgentService.Connect: one long-lived stream per worker agent."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field

import grpc
from google.protobuf.json_format import MessageToDict

from controlplane import domain
from controlplane.api.edge import current_principal
from controlplane.auth import Action, authorize
from controlplane.blocking import run_blocking
from controlplane.push.hub import TargetHub
from controlplane.push.recorder import FleetRecorder
from controlplane.services.fleet import FleetService, Target
from controlplane.storage.repositories import utcnow
from mixprec.errors import MixprecError, status_code
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc
from mixprec.v1 import policy_pb2 as pb

log = logging.getLogger(__name__)

ACCEPTED_KEY = "mixprec-accepted"  # initial metadata: the hello was accepted (worker.sync reads it)
REPORT_KINDS = {apb.Report.QUALITY: "quality", apb.Report.SERVING: "serving"}


@dataclass
class WorkerSession:
    """What one stream knows of its worker; decides whether a target means a new assignment."""

    endpoint: str
    worker_id: str
    applied: int                  # last version the worker confirmed (or reported at hello)
    current: int                  # the version the worker has or was last sent
    nacked: set[int] = field(default_factory=set)
    pending_nonce: str = ""
    sent_at: float = 0.0

    def next_version(self, target: Target) -> int | None:
        """The version to send this worker now, or None when it has it, refused it, or it is unknown."""
        want = target.version_for(self.worker_id)
        if want == self.current or want in self.nacked or want not in target.maps:
            return None
        return want

    def sent(self, version: int) -> str:
        self.current = version
        self.pending_nonce = uuid.uuid4().hex[:12]
        self.sent_at = time.perf_counter()
        return self.pending_nonce


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, fleet: FleetService, hub: TargetHub, recorder: FleetRecorder, replica: str, ack_latency=None,
                 fleet_metrics=None):
        self._fleet = fleet
        self._fleet_metrics = fleet_metrics  # propagation times and NACK reasons (controlplane.api.fleet_metrics)
        self._hub = hub
        self._recorder = recorder
        self._replica = replica
        self._ack_latency = ack_latency
        self._prototypes: dict[tuple[str, int], tuple[Target, apb.Assignment]] = {}

    async def Connect(self, request_iterator, context: grpc.aio.ServicerContext):
        first = await context.read()
        if first is grpc.aio.EOF or first.WhichOneof("message") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message on the stream must be a hello")
        hello = first.hello
        try:
            authorize(current_principal(), Action.CONNECT, hello.endpoint)
            state, target = await run_blocking(
                self._fleet.worker_connected, hello.endpoint, hello.worker_id, list(hello.layers), self._replica,
                hello.running_version, MessageToDict(hello.hardware, preserving_proto_field_name=True),
                hello.inference_address,
            )
        except MixprecError as err:
            await context.abort(status_code(err), str(err))
        self._hub.publish(target)
        await context.send_initial_metadata(((ACCEPTED_KEY, self._replica),))
        session = WorkerSession(
            hello.endpoint, hello.worker_id, applied=hello.running_version, current=hello.running_version,
            nacked={state.last_nack_version} if state.last_nack_version else set(),
        )
        # A NACKed version stays refused only until a newer one exists; the worker runs what it applied.
        session.nacked.discard(hello.running_version)
        log.info("worker %s of %s connected (running v%d)", hello.worker_id, hello.endpoint, hello.running_version)
        self._recorder.live(hello.endpoint, hello.worker_id, True)
        reader: asyncio.Future | None = None
        try:
            with self._hub.watch(hello.endpoint) as changed:
                # The reader sets `changed` too when the stream ends, so one wait covers both.
                reader = asyncio.ensure_future(self._read(context, session))
                reader.add_done_callback(lambda _: changed.set())
                reason = "connect"
                while not reader.done():
                    changed.clear()
                    latest = self._hub.get(hello.endpoint)
                    assignment = self._assignment(session, latest, reason) if latest else None
                    if assignment is not None:
                        await context.write(apb.ControlMessage(assignment=assignment))
                    reason = "change"
                    await changed.wait()
                reader.result()
        finally:
            if reader is not None:
                reader.cancel()
            self._recorder.live(hello.endpoint, hello.worker_id, False)
            self._recorder.update(domain.WorkerUpdate(hello.endpoint, hello.worker_id, connected=False))
            log.info("worker %s of %s disconnected", hello.worker_id, hello.endpoint)

    def _assignment(self, session: WorkerSession, target: Target, reason: str) -> apb.Assignment | None:
        version = session.next_version(target)
        if version is None:
            return None
        # Every worker of an endpoint gets the same map: build its message once per target.
        key = (target.endpoint, version)
        cached = self._prototypes.get(key)
        if cached is None or cached[0] is not target:
            prototype = apb.Assignment(
                version=version,
                precision_map=[pb.LayerPrecision(layer=layer, precision=p) for layer, p in target.maps[version]],
            )
            self._prototypes[key] = cached = (target, prototype)
        assignment = apb.Assignment()
        assignment.CopyFrom(cached[1])
        assignment.nonce, assignment.reason = session.sent(version), reason
        return assignment

    async def _read(self, context: grpc.aio.ServicerContext, session: WorkerSession) -> None:
        while True:
            message = await context.read()
            if message is grpc.aio.EOF:
                return
            kind = message.WhichOneof("message")
            if kind == "ack":
                self._on_ack(session, message.ack)
            elif kind == "nack":
                self._on_nack(session, message.nack)
            elif kind == "report":
                self._on_report(session, message.report)
            else:
                log.warning("worker %s sent an unexpected %s; ignored", session.worker_id, kind)

    def _on_ack(self, session: WorkerSession, ack: apb.Ack) -> None:
        if ack.nonce != session.pending_nonce:
            log.debug("stale ACK from %s for v%d ignored", session.worker_id, ack.version)
            return
        elapsed = time.perf_counter() - session.sent_at
        if self._ack_latency is not None:
            self._ack_latency.observe(elapsed)
        if self._fleet_metrics is not None:
            self._fleet_metrics.acked(session.endpoint, elapsed)
        session.applied = session.current = ack.version
        self._recorder.update(
            domain.WorkerUpdate(session.endpoint, session.worker_id, applied_version=ack.version,
                                last_ack_version=ack.version)
        )

    def _on_nack(self, session: WorkerSession, nack: apb.Nack) -> None:
        if nack.nonce != session.pending_nonce:
            return
        log.warning("worker %s refused v%d: %s", session.worker_id, nack.version, nack.error)
        session.nacked.add(nack.version)
        if self._fleet_metrics is not None:
            self._fleet_metrics.nacked(session.endpoint, nack.error)
        session.current = session.applied
        self._recorder.update(
            domain.WorkerUpdate(session.endpoint, session.worker_id, last_nack_version=nack.version,
                                last_nack_error=nack.error[:2000])
        )

    def _on_report(self, session: WorkerSession, report: apb.Report) -> None:
        kind = REPORT_KINDS.get(report.kind)
        if kind is None:
            return
        received = utcnow()
        body = MessageToDict(report, preserving_proto_field_name=True) | {"received_at": received.isoformat()}
        self._recorder.report(domain.ReportRecord(session.endpoint, session.worker_id, report.version, kind, body,
                                                  received))
        field_name = "last_quality" if kind == "quality" else "last_serving"
        self._recorder.update(domain.WorkerUpdate(session.endpoint, session.worker_id, **{field_name: body}))
