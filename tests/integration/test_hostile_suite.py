"""Generated hostile requests against every RPC the server lists through reflection, and the CLI.

Each case is one call with an admin token (so nothing is refused for want of rights): the answer is
never UNKNOWN or INTERNAL, never carries SQL or a stack, and a refused call writes nothing. The
server (in this process, on Postgres, port 0) is reused by every case; its memory stays bounded.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import threading
import time

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import LAYERS, LightAgent, RunningControlPlane, rules, stubs

from controlplane.auth import TokenService
from controlplane.storage.database import open_engine, upgrade
from controlplane.storage.unit_of_work import unit_of_work_factory
from mixprec import transport
from mixprec.cli.main import main
from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc
from mixprec.v1 import policy_pb2 as pb

pytestmark = pytest.mark.slow

CASES = int(os.environ.get("MIXPREC_HOSTILE_CASES", "500"))  # unary cases; streams and the CLI get a fifth each
LEAKS = ("SELECT", "INSERT", "UPDATE ", "Traceback", "sqlalchemy", "psycopg", "[SQL", "parameters")
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}

# Texts that hit every limit and every storage quirk: NUL, control characters, sizes just over limits.
SIZES = (0, 1, 62, 63, 64, 100, 101, 128, 129, 200, 201, 256, 257, 10_000, 10_001, 1_000_001, 3_800_000)
# Plausible values too (three times as likely), so that generated calls also get past validation.
PLAUSIBLE = st.sampled_from(["emb", "other", "fp8", "bf16", "layers.*.mlp.*", "*", "layers.0.mlp.up_proj",
                             "viewer", "operator", "new-endpoint", "a reason", "{}"])
TEXT = st.one_of(
    PLAUSIBLE, PLAUSIBLE, PLAUSIBLE,
    st.sampled_from(["[", "[]", "a\x00b", "\x00", "é", "🙂", "[[[[", " ", "\n", "DROP TABLE endpoints; --"]),
    st.builds(lambda n, c: c * n, st.sampled_from(SIZES), st.sampled_from(["a", "\x00", "*a", "[", "é"])),
    st.text(max_size=40),
)
INTS = {
    FieldDescriptor.TYPE_UINT32: st.sampled_from([0, 1, 1, 1, 2, 2, 3, 2**31 - 1, 2**31, 2**32 - 1]),
    FieldDescriptor.TYPE_UINT64: st.sampled_from([0, 1, 2**31 - 1, 2**31, 2**53 + 1, 2**63, 2**64 - 1]),
    FieldDescriptor.TYPE_INT32: st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31)]),
    FieldDescriptor.TYPE_INT64: st.sampled_from([0, -1, 2**63 - 1, -(2**63)]),
}
DOUBLES = st.one_of(st.sampled_from([0.0, 0.01, 1.0, 25.0, 100.0]), st.sampled_from([0.0, 0.5, 50.0]),
                    st.sampled_from([-1.0, 1e14, 1e308, float("inf"), float("nan"), 5e-324]),
                    st.floats(allow_nan=True, allow_infinity=True))


def message_strategy(descriptor, depth: int = 0):
    """Messages of `descriptor` with any subset of fields set to hostile values."""
    fields = {}
    for field in descriptor.fields:
        value = _field_strategy(field, depth)
        if value is not None:
            fields[field.name] = st.one_of(st.none(), value)
    cls = message_factory.GetMessageClass(descriptor)

    def build(values):
        message = cls()
        for name, value in values.items():
            if value is None:
                continue
            field = descriptor.fields_by_name[name]
            target = getattr(message, name)
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                for k, v in value.items():
                    if field.message_type.fields_by_name["value"].message_type is not None:
                        target[k].CopyFrom(v)
                    else:
                        target[k] = v
            elif field.is_repeated:
                if field.message_type is not None:
                    for item in value:
                        target.add().CopyFrom(item)
                else:
                    target.extend(value)
            elif field.message_type is not None:
                target.CopyFrom(value)
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional=fields).map(build)


def _scalar(field, depth):
    if field.type == FieldDescriptor.TYPE_STRING:
        return TEXT
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=300)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return DOUBLES
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_strategy(field.message_type, depth + 1) if depth < 3 else None
    return INTS.get(field.type, st.integers(0, 2**31 - 1))


def _field_strategy(field, depth):
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value = _scalar(field.message_type.fields_by_name["value"], depth)
        return st.dictionaries(TEXT, value, max_size=3) | st.builds(
            lambda n: {f"m{i}": 1.0 for i in range(n)}, st.sampled_from([64, 65, 1000]))
    item = _scalar(field, depth)
    if item is None:
        return None
    if field.is_repeated:
        # Long lists of short items (a long list of long items is only the client's own memory: 20,001
        # copies of a message holding a 3.8 MB text would be 76 GB here before anything is sent).
        if field.type == FieldDescriptor.TYPE_STRING:
            short = st.just("layers.0.x")
        elif field.message_type is not None:
            short = st.just(message_factory.GetMessageClass(field.message_type)())
        else:
            short = item
        many = st.builds(lambda n, v: [v] * n, st.sampled_from([21, 65, 1001, 20_001]), short)
        return st.lists(item, max_size=4) | many
    return item


@pytest.fixture(scope="module")
def target(postgres):
    url = postgres.create()
    engine = open_engine(url)
    upgrade(engine)
    admin, _ = TokenService(unit_of_work_factory(engine)).create("fuzz-admin", "admin")
    engine.dispose()
    # The controller never runs during the suite: only the fuzzed calls write.
    running = RunningControlPlane(url, auth="required", rollout_interval=3600, stream_limits={"hello_timeout": 1})
    policy, fleet = stubs(running.address, admin)
    for name in ("emb", "other"):
        policy.CreateEndpoint(pb.CreateEndpointRequest(name=name, layers=LAYERS))
        policy.CreatePolicy(pb.CreatePolicyRequest(endpoint=name, rules=rules(("layers.*.mlp.*", "fp8"))))
    fleet.Activate(apb.ActivateRequest(endpoint="emb", version=1))
    channel = transport.channel(running.address, admin)
    database = ProtoReflectionDescriptorDatabase(grpc.insecure_channel(running.address))
    pool = DescriptorPool(database)
    methods = [
        method
        for service in database.get_services() if service.startswith("mixprec.")
        for method in pool.FindServiceByName(service).methods
    ]
    engine = open_engine(url)
    yield running, channel, methods, engine, admin, url
    engine.dispose()
    running.stop()
    postgres.drop(url)


def _fingerprint(engine) -> tuple:
    """Row count and largest id of every table: changes whenever anything is written."""
    with engine.connect() as conn:
        tables = [t for t in sa.inspect(conn).get_table_names() if t != "alembic_version"]
        query = " UNION ALL ".join(f"SELECT '{t}', COUNT(*), COALESCE(MAX(id), 0) FROM {t}" for t in tables)
        return tuple(sorted(conn.execute(sa.text(query))))


def _rss_mib() -> float:
    """This process's resident memory now (the server runs in it), after a collection and after the C
    allocator hands freed pages back: what is left is what something still holds, not fragmentation."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _check(err: grpc.RpcError, what: str) -> None:
    assert err.code() not in FORBIDDEN, f"{what}: {err.code().name} {err.details()}"
    details = err.details() or ""
    assert not any(leak in details for leak in LEAKS), f"{what} leaks internals: {details[:300]}"


def test_every_unary_rpc_survives_generated_hostile_requests(target):
    running, channel, methods, engine, _, _ = target
    unary = [m for m in methods if not m.client_streaming and not m.server_streaming]
    assert {m.name for m in unary} >= {"CreateEndpoint", "DeleteEndpoint", "CreatePolicy", "ResolvePolicy",
                                       "Activate", "Rollback", "StartRollout", "GetRollout", "CreateToken",
                                       "TakeOverWorker"}
    counted = {"cases": 0}
    outcomes: dict[str, int] = {}
    rss_before = _rss_mib()

    @settings(max_examples=CASES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(st.data())
    def case(data):
        method = data.draw(st.sampled_from(unary), label="method")
        raw = data.draw(st.booleans(), label="raw bytes") and data.draw(st.binary(max_size=64), label="bytes")
        request = raw if raw else data.draw(message_strategy(method.input_type), label="request")
        path = f"/{method.containing_service.full_name}/{method.name}"
        call = channel.unary_unary(path, request_serializer=None if raw else type(request).SerializeToString)
        before = _fingerprint(engine)
        counted["cases"] += 1
        try:
            call(request, timeout=30)
            outcomes["OK"] = outcomes.get("OK", 0) + 1
        except grpc.RpcError as err:
            outcomes[err.code().name] = outcomes.get(err.code().name, 0) + 1
            _check(err, path)
            assert _fingerprint(engine) == before, f"{path} was refused ({err.code().name}) but wrote"

    case()
    print("outcomes:", sorted(outcomes.items()))
    assert counted["cases"] >= CASES
    grown = _rss_mib() - rss_before
    print(f"server process grew {grown:.0f} MiB")
    assert grown < 150, f"the server kept {grown:.0f} MiB after {CASES} cases"


def test_agent_streams_survive_generated_hostile_messages(target):
    running, _, methods, _, admin, _ = target
    connect = next(m for m in methods if m.name == "Connect")
    from mixprec.v1 import agent_pb2_grpc

    stub = agent_pb2_grpc.AgentServiceStub(transport.channel(running.address, admin))
    hello = apb.AgentMessage(hello=apb.Hello(endpoint="emb", worker_id="fuzz", layers=LAYERS))
    messages = message_strategy(connect.input_type)

    @settings(max_examples=max(CASES // 5, 50), deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(st.booleans(), st.lists(messages, max_size=4))
    def case(start_with_hello, sent):
        stop = threading.Event()

        def outgoing():
            if start_with_hello:
                yield hello
            yield from sent
            stop.wait(0.2)

        try:
            for _ in stub.Connect(outgoing(), timeout=5):
                pass
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                _check(err, "Connect")
        finally:
            stop.set()

    case()
    assert stubs(running.address, admin)[0].ListEndpoints(pb.ListEndpointsRequest(), timeout=10) is not None


def test_generated_hellos_never_take_a_live_worker_id(target):
    """Hellos for a held worker id (and others) with every kind of agent token: the shared token, another
    worker's own token, a bootstrap token, garbage. The holder's stream is never ended and its lease
    never moves."""
    running, _, _, engine, _, url = target
    engine_tokens = open_engine(url)
    tokens = TokenService(unit_of_work_factory(engine_tokens))
    made = {name: tokens.create(name, "agent", "emb", worker_id=worker, bootstrap=boot)[0]
            for name, worker, boot in [("held-own", "held", False), ("fleet-shared", "", False),
                                       ("w7-own", "w7", False), ("fleet-boot", "", True)]}
    engine_tokens.dispose()
    pool = [made["fleet-shared"], made["w7-own"], made["fleet-boot"], "mxp_" + "A" * 43, "garbage"]
    worker_ids = st.one_of(st.just("held"), st.just("held"), st.sampled_from(["w7", "held ", "HELD", "héld"]),
                           st.text(min_size=1, max_size=20))

    def lease_of_held() -> tuple:
        with engine.connect() as conn:
            return tuple(conn.execute(sa.text(
                "SELECT token_name, stream FROM worker_leases WHERE endpoint = 'emb' AND worker_id = 'held'")))

    async def scenario():
        holder = LightAgent(running.address, "emb", "held", token=made["held-own"]).start()
        await asyncio.wait_for(holder.loop.connected.wait(), 10)
        before = lease_of_held()
        stub = agent_pb2_grpc.AgentServiceStub

        @settings(max_examples=max(CASES // 10, 30), deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        @given(st.sampled_from(pool), worker_ids)
        def case(token, worker_id):
            def outgoing():
                yield apb.AgentMessage(hello=apb.Hello(endpoint="emb", worker_id=worker_id, layers=LAYERS))
                time.sleep(0.1)

            try:
                for _ in stub(transport.channel(running.address, token)).Connect(outgoing(), timeout=5):
                    pass
            except grpc.RpcError as err:
                _check(err, "Connect")
                if worker_id == "held":
                    assert err.code() in (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.UNAUTHENTICATED,
                                          grpc.StatusCode.PERMISSION_DENIED), err.details()

        await asyncio.to_thread(case)
        assert holder.loop.connected.is_set() and not holder.loop.last_error
        assert lease_of_held() == before and before[0][0] == "held-own"
        await holder.stop()

    asyncio.run(scenario())


CLI_COMMANDS = [
    ["endpoint", "create"], ["endpoint", "show"], ["endpoint", "delete", "--reason", "fuzz"],
    ["policy", "show"], ["policy", "history"], ["policy", "diff"], ["activate"], ["rollback", "--reason", "fuzz"],
    ["fleet"], ["audit"], ["rollout", "status"], ["rollout", "start"], ["rollout", "abort"], ["token", "revoke"],
    ["takeover", "emb", "--reason", "fuzz"], ["token", "create", "--role", "agent", "--endpoint", "emb", "--bootstrap"],
]
CLI_TEXT = st.one_of(st.sampled_from(["emb", "-1", "4294967295", "99999999999", "1e14", "nan", "", "é", "a" * 300]),
                     st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                             max_size=20))


def test_the_cli_answers_generated_arguments_with_its_exit_codes(target, capsys, monkeypatch):
    running, _, _, engine, admin, _ = target
    monkeypatch.setenv("MIXPREC_TOKEN", admin)

    @settings(max_examples=max(CASES // 5, 50), deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(st.sampled_from(CLI_COMMANDS), st.lists(CLI_TEXT, min_size=1, max_size=3))
    def case(command, values):
        try:
            code = main(["--server", running.address, *command, "--", *values])
        except SystemExit as exit_:  # argparse: usage errors are exit 2
            code = exit_.code
        out, err = capsys.readouterr()
        assert code in (0, 2, 3, 4, 6), f"{command} {values!r}: exit {code}\n{err}"
        assert "Traceback" not in err and not any(leak in err for leak in LEAKS[:3])
        # Whatever came back (a NACK a fuzzed stream sent, an argument echoed in an error) reaches the
        # terminal with its control characters shown as escapes.
        assert [ch for ch in out + err if not ch.isprintable() and ch != "\n"] == [], (command, values, out, err)

    started = time.monotonic()
    case()
    assert time.monotonic() - started < 600


@pytest.fixture(scope="module")
def inference(tmp_path_factory):
    """A worker's InferenceService (tiny random decoder, client tokens required) on port 0 in a thread."""
    import asyncio

    from worker.agent import AgentConfig, WorkerAgent
    from worker.runtime import build_runtime

    token = "mxp_" + "f" * 43
    tokens = tmp_path_factory.mktemp("inference") / "client-tokens"
    tokens.write_text(token + "\n")
    config = AgentConfig(endpoint="llm", model="tiny-llama", server="127.0.0.1:1", inference_listen="127.0.0.1:0",
                         client_tokens=str(tokens))
    agent = WorkerAgent(config, build_runtime("tiny-llama", eval_samples=0))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = asyncio.run_coroutine_threadsafe(agent.start_inference(), loop).result(timeout=60)
    yield f"127.0.0.1:{port}", token
    asyncio.run_coroutine_threadsafe(agent._server.stop(0), loop).result(timeout=30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


def test_the_workers_inference_service_survives_generated_hostile_requests(inference):
    from mixprec.v1 import inference_pb2 as ipb

    address, token = inference
    methods = list(ipb.DESCRIPTOR.services_by_name["InferenceService"].methods)
    with_token, without = transport.channel(address, token), grpc.insecure_channel(address)
    outcomes: dict[str, int] = {}

    @settings(max_examples=max(CASES // 5, 50), deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(st.data())
    def case(data):
        method = data.draw(st.sampled_from(methods), label="method")
        raw = data.draw(st.booleans(), label="raw bytes") and data.draw(st.binary(max_size=64), label="bytes")
        request = raw if raw else data.draw(message_strategy(method.input_type), label="request")
        authenticated = data.draw(st.booleans(), label="token")
        channel = with_token if authenticated else without
        path = f"/{method.containing_service.full_name}/{method.name}"
        serializer = None if raw else type(request).SerializeToString
        try:
            if method.server_streaming:
                for _ in channel.unary_stream(path, request_serializer=serializer)(request, timeout=60):
                    pass
            else:
                channel.unary_unary(path, request_serializer=serializer)(request, timeout=60)
            assert authenticated, f"{path} served a caller without a token"
            outcomes["OK"] = outcomes.get("OK", 0) + 1
        except grpc.RpcError as err:
            outcomes[err.code().name] = outcomes.get(err.code().name, 0) + 1
            _check(err, path)
            # A message over gRPC's receive limit is refused by the transport before any handler
            # (or token check) runs: RESOURCE_EXHAUSTED, nothing served.
            too_large = not raw and request.ByteSize() > 4 * 1024 * 1024
            if not authenticated and not too_large:
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED, f"{path}: {err.code().name} {err.details()}"
            if too_large:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, f"{path}: {err.code().name}"

    case()
    print("outcomes:", sorted(outcomes.items()))
