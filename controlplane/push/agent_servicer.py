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
from controlplane.blocking import run_blocking
from controlplane.push.hub import TargetHub
from controlplane.push.recorder import FleetRecorder
from controlplane.services.fleet import FleetService, Target, check_hello
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
    report_round: int = 0         # the target's last request for reports this worker has seen
    outbox: list[bytes] = field(default_factory=list)  # serialized control messages besides assignments
    wake: asyncio.Event | None = None

    def send_soon(self, message: apb.ControlMessage) -> None:
        self.outbox.append(message.SerializeToString())
        if self.wake is not None:
            self.wake.set()

    def next_version(self, target: Target) -> int | None:
        """The version to send this worker now, or None when it has it, refused it, or it is unknown."""
        want = target.version_for(self.worker_id)
        if want == self.current or want in self.nacked or want not in target.maps:
            return None
        return want

    def sent(self, version: int, nonce: str) -> None:
        self.current, self.pending_nonce, self.sent_at = version, nonce, time.perf_counter()


def _serialized(message) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def add_agent_servicer(servicer: AgentServicer, server: grpc.aio.Server) -> None:
    """Registers Connect with a serializer that passes bytes through: an assignment is serialized once
    per version and the same bytes go to every stream."""
    connect = grpc.stream_stream_rpc_method_handler(
        servicer.Connect, request_deserializer=apb.AgentMessage.FromString, response_serializer=_serialized,
    )
    service = apb.DESCRIPTOR.services_by_name["AgentService"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"Connect": connect}),))


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, fleet: FleetService, hub: TargetHub, recorder: FleetRecorder, replica: str, ack_latency=None):
        self._fleet = fleet
        self._hub = hub
        self._recorder = recorder
        self._replica = replica
        self._catalogs: dict[str, tuple[str, ...]] = {}  # endpoint -> catalog a hello was accepted with
        self._ack_latency = ack_latency
        # (endpoint, version, reason) -> (the target it was built from, its nonce, the serialized message)
        self._serialized: dict[tuple[str, int, str], tuple[Target, str, bytes]] = {}

    async def Connect(self, request_iterator, context: grpc.aio.ServicerContext):
        first = await context.read()
        if first is grpc.aio.EOF or first.WhichOneof("message") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message on the stream must be a hello")
        hello = first.hello
        try:
            last_nack, target = await self._register(hello)
        except MixprecError as err:
            await context.abort(status_code(err), str(err))
        await context.send_initial_metadata(((ACCEPTED_KEY, self._replica),))
        session = WorkerSession(
            hello.endpoint, hello.worker_id, applied=hello.running_version, current=hello.running_version,
            nacked={last_nack} if last_nack else set(), report_round=target.report_round,
        )
        # A NACKed version stays refused only until a newer one exists; the worker runs what it applied.
        session.nacked.discard(hello.running_version)
        log.info("worker %s of %s connected (running v%d)", hello.worker_id, hello.endpoint, hello.running_version)
        self._recorder.live(hello.endpoint, hello.worker_id, True)
        reader: asyncio.Future | None = None
        try:
            with self._hub.watch(hello.endpoint) as changed:
                # The reader and acknowledged reports set `changed` too, so one wait covers all three.
                session.wake = changed
                reader = asyncio.ensure_future(self._read(context, session))
                reader.add_done_callback(lambda _: changed.set())
                reason = "connect"
                while not reader.done():
                    changed.clear()
                    latest = self._hub.get(hello.endpoint)
                    if latest is not None:
                        await self._send_target(context, session, latest, reason)
                    while session.outbox:
                        await context.write(session.outbox.pop(0))
                    reason = "change"
                    await changed.wait()
                reader.result()
        finally:
            if reader is not None:
                reader.cancel()
            self._recorder.live(hello.endpoint, hello.worker_id, False)
            self._recorder.update(domain.WorkerUpdate(hello.endpoint, hello.worker_id, connected=False))
            log.info("worker %s of %s disconnected", hello.worker_id, hello.endpoint)

    async def _register(self, hello: apb.Hello) -> tuple[int, Target]:
        """Accepts a hello: (the version this worker last refused, the endpoint's target).

        Once this replica serves an endpoint with streams (its target kept current by the change feed),
        a hello with the catalog already accepted is written behind like ACKs: thousands of agents
        reconnecting at once cost a few batched writes, not a transaction each. (Such a worker's last
        refusal is not read back: a version it refused may be sent once more, and refused once more.)
        """
        hardware = MessageToDict(hello.hardware, preserving_proto_field_name=True)
        target = self._hub.get(hello.endpoint)
        if (target is not None and self._hub.connected(hello.endpoint)
                and self._catalogs.get(hello.endpoint) == tuple(hello.layers)):
            check_hello(hello.endpoint, hello.worker_id, list(hello.layers))
            self._recorder.connected(domain.WorkerConnect(
                hello.endpoint, hello.worker_id, self._replica, hello.running_version, hardware,
                hello.inference_address, utcnow(),
            ))
            return 0, target
        state, target = await run_blocking(
            self._fleet.worker_connected, hello.endpoint, hello.worker_id, list(hello.layers), self._replica,
            hello.running_version, hardware, hello.inference_address,
        )
        self._catalogs[hello.endpoint] = tuple(hello.layers)
        self._hub.publish(target)
        return state.last_nack_version, target

    async def _send_target(self, context, session: WorkerSession, target: Target, reason: str) -> None:
        version = session.next_version(target)
        if version is not None:
            nonce, payload = self._assignment(target, version, reason)
            session.sent(version, nonce)
            await context.write(payload)
        if target.report_round > session.report_round:
            # A rollout step is short of reports: its workers send theirs again (or measure again).
            session.report_round = target.report_round
            if session.worker_id in target.overrides:
                await context.write(apb.ControlMessage(
                    report_request=apb.ReportRequest(version=target.version_for(session.worker_id))
                ).SerializeToString())

    def _assignment(self, target: Target, version: int, reason: str) -> tuple[str, bytes]:
        """The serialized assignment of `version`: built once per target and shared by every stream
        (the nonce too: it tells one push from the next, not one worker from another)."""
        key = (target.endpoint, version, reason)
        cached = self._serialized.get(key)
        if cached is None or cached[0] is not target:
            nonce = uuid.uuid4().hex[:12]
            message = apb.ControlMessage(assignment=apb.Assignment(
                version=version, nonce=nonce, reason=reason,
                precision_map=[pb.LayerPrecision(layer=layer, precision=p) for layer, p in target.maps[version]],
            ))
            self._serialized[key] = cached = (target, nonce, message.SerializeToString())
        return cached[1], cached[2]

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
        if self._ack_latency is not None:
            self._ack_latency.observe(time.perf_counter() - session.sent_at)
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
        # Acknowledged once stored: until then the worker sends it again on every reconnect.
        acknowledgement = apb.ControlMessage(report_ack=apb.ReportAck(kind=report.kind, version=report.version))
        self._recorder.report(domain.ReportRecord(session.endpoint, session.worker_id, report.version, kind, body,
                                                  received),
                              on_stored=lambda: session.send_soon(acknowledgement))
        field_name = "last_quality" if kind == "quality" else "last_serving"
        self._recorder.update(domain.WorkerUpdate(session.endpoint, session.worker_id, **{field_name: body}))
