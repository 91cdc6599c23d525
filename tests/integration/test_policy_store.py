"""The service layer over real SQLite and Postgres: endpoints, immutable versions, compare-and-swap."""

from __future__ import annotations

import threading

import pytest
from support import snapshot

from controlplane.services.policies import PolicyService
from controlplane.storage.database import (
    current_revision,
    ensure_schema,
    head_revision,
    open_engine,
    upgrade,
)
from controlplane.storage.unit_of_work import unit_of_work_factory
from mixprec.errors import AlreadyExists, Conflict, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from mixprec.policy import PolicySpec, Rule

LAYERS = [f"layers.{i}.{g}" for i in range(2) for g in ("attention.q_proj", "mlp.up_proj", "mlp.down_proj")]
MLP_FP8 = PolicySpec((Rule("layers.*.mlp.*", "fp8"),))
ALL_FP8 = PolicySpec((Rule("*", "fp8"),))


@pytest.fixture
def service(db_url):
    engine = open_engine(db_url)
    yield PolicyService(unit_of_work_factory(engine))
    engine.dispose()


def test_endpoint_create_get_list(service):
    created = service.create_endpoint("embedder", LAYERS, model="minilm")
    assert (created.name, created.base_precision, created.layers) == ("embedder", "bf16", tuple(LAYERS))
    service.create_endpoint("another", LAYERS, base_precision="fp8")
    assert service.get_endpoint("embedder") == created
    assert [e.name for e in service.list_endpoints()] == ["another", "embedder"]
    with pytest.raises(AlreadyExists):
        service.create_endpoint("embedder", LAYERS)
    with pytest.raises(NotFound):
        service.get_endpoint("missing")


def test_versions_chain_and_stay_immutable(service):
    service.create_endpoint("embedder", LAYERS)
    v1 = service.create_policy("embedder", 0, MLP_FP8, author="ana", message="mlp first")
    v2 = service.create_policy("embedder", 1, ALL_FP8, author="bo")
    assert (v1.version, v1.parent_version, v2.version, v2.parent_version) == (1, 0, 2, 1)
    assert service.get_policy("embedder", 1)[0] == v1
    latest, endpoint = service.get_policy("embedder")
    assert latest == v2 and endpoint.latest_version == 2
    assert [v.version for v in service.list_policies("embedder")] == [1, 2]
    diff = service.diff_policies("embedder", 1, 2)
    assert diff.changes == [("layers.0.attention.q_proj", "bf16", "fp8"), ("layers.1.attention.q_proj", "bf16", "fp8")]
    assert diff.unchanged == 4
    with pytest.raises(NotFound):
        service.get_policy("embedder", 3)


def test_stale_parent_is_a_conflict_and_writes_nothing(service, db_url):
    service.create_endpoint("embedder", LAYERS)
    service.create_policy("embedder", 0, MLP_FP8)
    before = snapshot(db_url)
    for parent in (0, 2, 7):
        with pytest.raises(Conflict, match="latest is 1"):
            service.create_policy("embedder", parent, ALL_FP8)
    assert snapshot(db_url) == before


def test_invalid_policy_and_missing_catalog_write_nothing(service, db_url):
    service.create_endpoint("embedder", LAYERS)
    service.create_endpoint("no-catalog", [])
    before = snapshot(db_url)
    with pytest.raises(InvalidArgument, match=r"rules\[0\].match"):
        service.create_policy("embedder", 0, PolicySpec((Rule("layers.9.*", "fp8"),)))
    with pytest.raises(FailedPrecondition, match="no layer catalog"):
        service.create_policy("no-catalog", 0, MLP_FP8)
    with pytest.raises(InvalidArgument, match="parent_version"):
        service.create_policy("embedder", -1, MLP_FP8)
    assert snapshot(db_url) == before


def test_resolve_is_a_dry_run(service, db_url):
    service.create_endpoint("embedder", LAYERS)
    before = snapshot(db_url)
    ok = service.resolve_policy("embedder", MLP_FP8)
    assert ok.valid and ok.precision_map()["layers.1.mlp.down_proj"] == "fp8"
    bad = service.resolve_policy("embedder", PolicySpec((Rule("x", "fp9"),)))
    assert {e.field for e in bad.errors} == {"rules[0].match", "rules[0].precision"}
    assert snapshot(db_url) == before


def test_every_write_is_audited(service, db_url):
    service.create_endpoint("embedder", LAYERS, actor="ops")
    service.create_policy("embedder", 0, MLP_FP8, author="ana", message="why")
    engine = open_engine(db_url)
    with unit_of_work_factory(engine)() as uow:
        entries = uow.audit.list("embedder")
    engine.dispose()
    assert [(e.action, e.actor) for e in entries] == [("policy.create", "ana"), ("endpoint.create", "ops")]
    assert entries[0].reason == "why" and entries[0].detail["version"] == 1


def test_twenty_concurrent_writers_on_the_same_parent_exactly_one_wins(service, db_url):
    service.create_endpoint("embedder", LAYERS)
    service.create_policy("embedder", 0, MLP_FP8)
    barrier = threading.Barrier(20)
    outcomes: list[object] = [None] * 20

    def write(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = service.create_policy("embedder", 1, ALL_FP8, author=f"writer-{i}")
        except Exception as err:  # noqa: BLE001 - the test inspects what each writer got
            outcomes[i] = err

    threads = [threading.Thread(target=write, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [o for o in outcomes if not isinstance(o, Exception)]
    losers = [o for o in outcomes if isinstance(o, Exception)]
    assert len(winners) == 1 and winners[0].version == 2
    assert len(losers) == 19 and all(isinstance(e, Conflict) for e in losers), {type(e) for e in losers}
    versions = service.list_policies("embedder")
    assert [v.version for v in versions] == [1, 2] and versions[1].author == winners[0].author


def test_sqlite_file_migrates_itself_and_postgres_behind_refuses(tmp_path, empty_pg_url):
    sqlite = open_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    ensure_schema(sqlite)
    assert current_revision(sqlite) == head_revision()
    sqlite.dispose()

    pg = open_engine(empty_pg_url)
    with pytest.raises(FailedPrecondition, match="mixprec migrate --db"):
        ensure_schema(pg)
    assert current_revision(pg) is None  # refused, and nothing was created
    assert upgrade(pg) == (None, head_revision())
    assert upgrade(pg) == (head_revision(), head_revision())  # idempotent
    ensure_schema(pg)
    pg.dispose()


def test_unreachable_database_is_unavailable():
    engine = open_engine("postgresql+psycopg://postgres@127.0.0.1:1/nothing")
    with pytest.raises(Unavailable, match="database"):
        PolicyService(unit_of_work_factory(engine)).list_endpoints()
    with pytest.raises(Unavailable):
        current_revision(engine)


@pytest.mark.parametrize("url", ["nonsense", "mysql://x@y/z", "sqlite://", "sqlite:///:memory:"])
def test_bad_database_urls_are_invalid_arguments(url):
    with pytest.raises(InvalidArgument, match="db"):
        open_engine(url)
