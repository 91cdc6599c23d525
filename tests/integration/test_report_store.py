"""Stored reports: a report the worker sends again (same report id) is one row, SQLite and Postgres alike."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from controlplane import domain
from controlplane.storage.database import open_engine
from controlplane.storage.repositories import utcnow
from controlplane.storage.unit_of_work import UnitOfWork


def test_a_report_id_is_stored_once_and_a_resend_moves_its_arrival(db_url):
    engine = open_engine(db_url)
    sessions = sa.orm.sessionmaker(engine)
    start = utcnow()

    def report(report_id: str, seconds: float, samples: int) -> domain.ReportRecord:
        return domain.ReportRecord("emb", "w1", 1, "quality", {"samples": samples}, start + timedelta(seconds=seconds),
                                   report_id=report_id)

    try:
        with UnitOfWork(sessions) as uow:
            uow.endpoints.add(domain.Endpoint("emb", "bf16", "m", ("a",), start))
            uow.commit()
        with UnitOfWork(sessions) as uow:  # the same report twice in one batch, and two without an id
            uow.reports.add_all([report("r1", 0, 8), report("r1", 1, 8), report("", 2, 3), report("", 3, 4)])
            uow.commit()
        with UnitOfWork(sessions) as uow:  # resent in a later batch, beside a new measurement
            uow.reports.add_all([report("r1", 10, 8), report("r2", 11, 9)])
            uow.commit()
        with UnitOfWork(sessions) as uow:
            stored = uow.reports.since("emb")
        assert [(r.report_id, r.body["samples"]) for r in stored] == [("r1", 8), ("", 3), ("", 4), ("r2", 9)]
        first = next(r for r in stored if r.report_id == "r1")
        assert first.at == start + timedelta(seconds=10)  # counted for the step that asked for it again
    finally:
        engine.dispose()
