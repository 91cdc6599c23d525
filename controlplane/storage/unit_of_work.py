"""Unit of work: one transaction, committed explicitly, rolled back otherwise (Cosmic Python)."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from controlplane.storage.fleet_repositories import ActivationRepository, ReportRepository, WorkerRepository
from controlplane.storage.lease_repository import LeaseRepository
from controlplane.storage.repositories import AuditRepository, EndpointRepository, PolicyRepository
from controlplane.storage.rollout_repository import RolloutRepository
from controlplane.storage.token_repository import TokenRepository
from controlplane.storage.webhook_repository import DeliveryRepository, WebhookRepository
from controlplane.storage.write_requests import WriteRequestRepository, current_scope
from mixprec.errors import Conflict, Unavailable


class UnitOfWork:
    endpoints: EndpointRepository
    policies: PolicyRepository
    audit: AuditRepository
    activations: ActivationRepository
    workers: WorkerRepository
    reports: ReportRepository
    rollouts: RolloutRepository
    tokens: TokenRepository
    requests: WriteRequestRepository
    webhooks: WebhookRepository
    deliveries: DeliveryRepository
    leases: LeaseRepository

    def __init__(self, sessions: sessionmaker):
        self._sessions = sessions

    def __enter__(self) -> UnitOfWork:
        self.session: Session = self._sessions()
        self.endpoints = EndpointRepository(self.session)
        self.policies = PolicyRepository(self.session)
        self.audit = AuditRepository(self.session)
        self.activations = ActivationRepository(self.session)
        self.workers = WorkerRepository(self.session)
        self.reports = ReportRepository(self.session)
        self.rollouts = RolloutRepository(self.session)
        self.tokens = TokenRepository(self.session)
        self.requests = WriteRequestRepository(self.session)
        self.webhooks = WebhookRepository(self.session)
        self.deliveries = DeliveryRepository(self.session)
        self.leases = LeaseRepository(self.session)
        return self

    def savepoint(self):
        """A nested transaction: what fails inside it is undone alone (a context manager)."""
        return self.session.begin_nested()

    def commit(self) -> None:
        scope = current_scope.get()
        try:
            if scope is not None and not scope.recorded:
                # Recorded in the same transaction as the write: the request id is applied with it or not at all.
                self.requests.record(scope)
                try:
                    self.session.flush()
                except IntegrityError:
                    raise Conflict(f"request {scope.request_id!r} is being applied by another call; retry it to "
                                   "get its answer") from None
            if scope is not None:
                scope.check("committing")
            self.session.commit()
        except (OperationalError, InterfaceError) as exc:
            raise Unavailable(_unavailable_message(exc)) from None
        if scope is not None:
            scope.recorded = True

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self.session.rollback()
        except (OperationalError, InterfaceError):
            pass  # the connection is gone; nothing was committed
        finally:
            self.session.close()
        if isinstance(exc, (OperationalError, InterfaceError)):
            raise Unavailable(_unavailable_message(exc)) from None
        return False


def unit_of_work_factory(engine: Engine):
    """A callable that opens a fresh UnitOfWork over `engine` (one per request)."""
    sessions = sessionmaker(engine, expire_on_commit=False)
    return lambda: UnitOfWork(sessions)


def _unavailable_message(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return f"database unavailable: {text.splitlines()[0] if text else type(exc).__name__}"
