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
from controlplane.api.costs import RateLimits, TokenBucket, WorkerIdQuota
from controlplane.api.edge import current_principal
from controlplane.api.errors import abort_with
from controlplane.api.limits import Undecodable, check_request
from controlplane.auth import Action, authorize
from controlplane.blocking import run_blocking
from controlplane.push.holders import ClaimQueue, Holder, StreamHolders
from controlplane.push.hub import TargetHub
from controlplane.push.recorder import FleetRecorder
from controlplane.services.checks import check_name, check_worker_id
from controlplane.services.fleet import FleetService, Target, check_hello
from controlplane.services.identity import Claim, WorkerIdentity
from controlplane.storage.repositories import utcnow
from mixprec.errors import MixprecError
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc
from mixprec.v1 import policy_pb2 as pb

log = logging.getLogger(__name__)

ACCEPTED_KEY = "mixprec-accepted"  # initial metadata: the hello was accepted (worker.sync reads it)
ISSUED_TOKEN_KEY = "mixprec-worker-token"  # initial metadata: the token a bootstrap token issued this worker
REPORT_KINDS = {apb.Report.QUALITY: "quality", apb.Report.SERVING: "serving"}
HELLO_TIMEOUT_S = 10.0            # a stream that says nothing is closed (it holds a slot and a task)
MAX_STREAMS_PER_TOKEN = 1000      # one token's live streams on this replica
MAX_WORKER_IDS_PER_TOKEN = 1000   # distinct worker ids of one endpoint one token holds here (live or lately)
MAX_REPORTS_PER_TOKEN = 500.0     # reports a second, all of one token's streams here together
MAX_REPORTS_PER_WORKER = 1.0      # reports a second of one stream (a worker sends one per few seconds)
REPORT_BURST_S = 30.0             # a bucket holds this many seconds of its rate (at least 10 reports)
DROP_LOG_EVERY_S = 60.0           # a stream's dropped reports are logged at most this often


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
    token: str = ""
    reports: TokenBucket | None = None  # this stream's report rate
    dropped: int = 0              # reports over the rate since the last log line about them
    dropped_logged: float = 0.0

    def send_soon(self, message: apb.ControlMessage) -> None:
        self.outbox.append(message.SerializeToString())
        if self.wake is not None:
            self.wake.set()
    offered: set[int] = field(default_factory=set)  # versions this worker ran at hello or was sent

    def next_version(self, target: Target) -> int | None:
        """The version to send this worker now, or None when it has it, refused it, or it is unknown."""
        want = target.version_for(self.worker_id)
        if want == self.current or want in self.nacked or want not in target.maps:
            return None
        return want

    def sent(self, version: int, nonce: str) -> None:
        self.offered.add(version)
        self.current, self.pending_nonce, self.sent_at = version, nonce, time.perf_counter()


def _burst(rate: float) -> float:
    return max(10.0, rate * REPORT_BURST_S)


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
    def __init__(self, fleet: FleetService, hub: TargetHub, recorder: FleetRecorder, replica: str, ack_latency=None,
                 fleet_metrics=None, hello_timeout: float = HELLO_TIMEOUT_S,
                 max_streams_per_token: int = MAX_STREAMS_PER_TOKEN,
                 max_worker_ids_per_token: int = MAX_WORKER_IDS_PER_TOKEN,
                 max_reports_per_token: float = MAX_REPORTS_PER_TOKEN,
                 max_reports_per_worker: float = MAX_REPORTS_PER_WORKER, *,
                 identity: WorkerIdentity, holders: StreamHolders | None = None):
        self._hello_timeout = hello_timeout
        self._max_streams = max_streams_per_token
        self._worker_ids = WorkerIdQuota(max_worker_ids_per_token)
        self._token_reports = RateLimits(max_reports_per_token, _burst(max_reports_per_token))
        self._worker_report_rate = max_reports_per_worker
        self._streams: dict[str, int] = {}  # token name -> live streams on this replica
        self._identity = identity  # the worker-id leases of every replica
        self.holders = holders or StreamHolders()  # the worker ids this replica's streams hold
        self._releasing: set[asyncio.Future] = set()
        self._claims = ClaimQueue(identity)
        self._fleet = fleet
        self._fleet_metrics = fleet_metrics  # propagation times and NACK reasons (controlplane.api.fleet_metrics)
        self._hub = hub
        self._recorder = recorder
        self._replica = replica
        self._catalogs: dict[str, tuple[str, ...]] = {}  # endpoint -> catalog a hello was accepted with
        self._ack_latency = ack_latency
        # (endpoint, version, reason) -> (the target it was built from, its nonce, the serialized message)
        self._serialized: dict[tuple[str, int, str], tuple[Target, str, bytes]] = {}

    async def Connect(self, request_iterator, context: grpc.aio.ServicerContext):
        token = current_principal().name
        if self._streams.get(token, 0) >= self._max_streams:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"token {token!r} has {self._max_streams} streams open here; the limit is "
                                f"{self._max_streams} (close some, or give workers their own tokens)")
        self._streams[token] = self._streams.get(token, 0) + 1
        try:
            await self._connect(context, token)
        finally:
            self._streams[token] -= 1
            if not self._streams[token]:
                del self._streams[token]

    async def _hello(self, context) -> apb.Hello:
        try:
            first = await asyncio.wait_for(context.read(), self._hello_timeout)
        except asyncio.TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"no hello within {self._hello_timeout:g} s of opening the stream")
        if first is grpc.aio.EOF or isinstance(first, Undecodable) or first.WhichOneof("message") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message on the stream must be a hello")
        try:
            check_request(first)
        except MixprecError as err:
            await abort_with(context, err)
        return first.hello

    async def _bind(self, hello: apb.Hello) -> Holder:
        """A worker id belongs to one live stream, on any replica (services.identity decides who may take
        it); returns this stream's hold on it."""
        principal = current_principal()
        holder = Holder(hello.endpoint, hello.worker_id, uuid.uuid4().hex,
                        {principal.token_id} if principal.token_id is not None else set())
        self.holders.claiming.add(holder.stream)
        try:
            await self._claims.claim(Claim(principal, hello.endpoint, hello.worker_id, self._replica, holder.stream))
        except BaseException:  # refused, or cancelled (a lease it took anyway the session watch releases)
            self.holders.claiming.discard(holder.stream)
            raise
        self.holders.hold(holder)
        return holder

    async def _issue(self, holder: Holder) -> tuple[tuple[str, str], ...]:
        """A bootstrap token's accepted hello: the worker's own token, for the initial metadata."""
        principal = current_principal()
        if not principal.bootstrap:
            return ()
        secret, issued = await run_blocking(self._identity.issue, principal, holder.endpoint, holder.worker_id,
                                            holder.stream)
        holder.token_ids.add(issued.token_id)
        return ((ISSUED_TOKEN_KEY, secret),)

    async def _connect(self, context: grpc.aio.ServicerContext, token: str):
        hello = await self._hello(context)
        try:
            authorize(current_principal(), Action.CONNECT, hello.endpoint)
            check_name(hello.endpoint, "hello.endpoint")  # before the lease: names that can be stored
            check_worker_id(hello.worker_id, "hello.worker_id")
            self._worker_ids.admit(token, hello.endpoint, hello.worker_id)
        except MixprecError as err:
            await abort_with(context, err)
        try:
            holder = await self._bind(hello)
        except MixprecError as err:
            self._worker_ids.release(token, hello.endpoint, hello.worker_id)
            await abort_with(context, err)
        except BaseException:  # cancelled while claiming
            self._worker_ids.release(token, hello.endpoint, hello.worker_id)
            raise
        try:
            last_nack, target = await self._register(hello)
            issued = await self._issue(holder)
            await context.send_initial_metadata(((ACCEPTED_KEY, self._replica), *issued))
        except MixprecError as err:
            self._release(holder)
            self._worker_ids.release(token, hello.endpoint, hello.worker_id)
            await abort_with(context, err)
        except BaseException:  # cancelled (the worker went away): the id must not stay held
            self._release(holder)
            self._worker_ids.release(token, hello.endpoint, hello.worker_id)
            raise
        session = WorkerSession(
            hello.endpoint, hello.worker_id, applied=hello.running_version, current=hello.running_version,
            nacked={last_nack} if last_nack else set(), report_round=target.report_round, token=token,
            reports=TokenBucket(self._worker_report_rate, _burst(self._worker_report_rate)),
        )
        # A NACKed version stays refused only until a newer one exists; the worker runs what it applied.
        session.nacked.discard(hello.running_version)
        session.offered.add(hello.running_version)
        log.info("worker %s of %s connected (running v%d)", hello.worker_id, hello.endpoint, hello.running_version)
        self._recorder.live(hello.endpoint, hello.worker_id, True)
        reader: asyncio.Future | None = None
        ended: asyncio.Future | None = None
        try:
            with self._hub.watch(hello.endpoint) as changed:
                # The reader and acknowledged reports set `changed` too, so one wait covers all three.
                session.wake = changed
                reader = asyncio.ensure_future(self._read(context, session))
                reader.add_done_callback(lambda _: changed.set())
                ended = asyncio.ensure_future(holder.ended.wait())
                ended.add_done_callback(lambda _: changed.set())
                reason = "connect"
                while not reader.done() and not holder.ended.is_set():
                    changed.clear()
                    latest = self._hub.get(hello.endpoint)
                    if latest is None:  # deleted: the worker keeps serving its last map and retries
                        await context.abort(grpc.StatusCode.NOT_FOUND, f"endpoint {hello.endpoint!r} was deleted")
                    await self._send_target(context, session, latest, reason)
                    while session.outbox:
                        await context.write(session.outbox.pop(0))
                    reason = "change"
                    await changed.wait()
                if holder.ended.is_set():
                    await context.abort(holder.code, holder.why)
                reader.result()
        finally:
            for task in (reader, ended):
                if task is not None:
                    task.cancel()
            if self._release(holder):
                self._worker_ids.release(token, hello.endpoint, hello.worker_id)
                self._recorder.live(hello.endpoint, hello.worker_id, False)
                self._recorder.update(domain.WorkerUpdate(hello.endpoint, hello.worker_id, connected=False))
                log.info("worker %s of %s disconnected", hello.worker_id, hello.endpoint)

    def _release(self, holder: Holder) -> bool:
        """Lets go of the worker id here and of its lease everywhere, unless a newer stream took it over;
        True when this stream held it. The lease is released in the background (a cancelled stream cannot
        wait for the database); one that cannot be released expires with this replica's heartbeat."""
        if not self.holders.release(holder):
            return False
        self._release_lease(holder)
        return True

    def _release_lease(self, holder: Holder) -> None:
        task = asyncio.ensure_future(run_blocking(self._identity.release, holder.endpoint, holder.worker_id,
                                                  holder.stream))
        self._releasing.add(task)
        task.add_done_callback(self._released)

    def _released(self, task: asyncio.Future) -> None:
        self._releasing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not release a worker-id lease (%s); it expires", task.exception())

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
            try:  # a record over the limits is refused here; the stream and its other records go on
                check_request(message)
            except MixprecError as err:
                log.warning("worker %s of %s sent a message refused at the edge: %s", session.worker_id,
                            session.endpoint, err)
                continue
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
        if ack.nonce != session.pending_nonce or ack.version != session.current:
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
        if nack.nonce != session.pending_nonce or nack.version != session.current:
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

    def _within_report_rate(self, session: WorkerSession) -> bool:
        """Reports over the stream's or the token's rate are dropped unacknowledged (an honest worker
        resends its latest per version on reconnect), so a flood costs neither rows nor other streams."""
        if session.reports.take() and self._token_reports.take(session.token):
            return True
        session.dropped += 1
        now = time.monotonic()
        if now - session.dropped_logged >= DROP_LOG_EVERY_S:
            log.warning("worker %s of %s (token %r) sends reports faster than %g/s per stream or %g/s per token; "
                        "dropped %d", session.worker_id, session.endpoint, session.token, session.reports.rate,
                        self._token_reports.rate, session.dropped)
            session.dropped, session.dropped_logged = 0, now
        return False

    def _on_report(self, session: WorkerSession, report: apb.Report) -> None:
        kind = REPORT_KINDS.get(report.kind)
        if kind is None or not self._within_report_rate(session):
            return
        if report.version not in session.offered:  # numbers about a version this worker never ran
            log.warning("worker %s of %s reported on v%d, which it was never sent; ignored", session.worker_id,
                        session.endpoint, report.version)
            return
        received = utcnow()
        body = MessageToDict(report, preserving_proto_field_name=True) | {"received_at": received.isoformat()}
        # Acknowledged once stored: until then the worker sends it again on every reconnect.
        acknowledgement = apb.ControlMessage(report_ack=apb.ReportAck(kind=report.kind, version=report.version,
                                                                      report_id=report.report_id))
        self._recorder.report(domain.ReportRecord(session.endpoint, session.worker_id, report.version, kind, body,
                                                  received, report_id=report.report_id),
                              on_stored=lambda: session.send_soon(acknowledgement))
        field_name = "last_quality" if kind == "quality" else "last_serving"
        self._recorder.update(domain.WorkerUpdate(session.endpoint, session.worker_id, **{field_name: body}))
