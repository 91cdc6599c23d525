"""Who may do what: every role against every action, and endpoint scopes."""

from __future__ import annotations

import pytest

from controlplane.auth import ANONYMOUS, Action, Principal, Role, authorize, parse_duration
from mixprec.errors import InvalidArgument, PermissionDenied

EXPECTED = {
    Role.VIEWER: {Action.READ},
    Role.OPERATOR: {Action.READ, Action.WRITE_POLICY, Action.ACTIVATE, Action.ROLLBACK, Action.ROLLOUT},
    Role.ADMIN: set(Action),
    Role.AGENT: {Action.CONNECT},
    Role.CLIENT: set(),
}


@pytest.mark.parametrize("role", list(Role))
def test_each_role_may_take_exactly_its_actions(role):
    principal = Principal("t", role)
    for action in Action:
        if action in EXPECTED[role]:
            authorize(principal, action, "search")
        else:
            with pytest.raises(PermissionDenied, match=f"role {role.value}"):
                authorize(principal, action, "search")


def test_a_scoped_token_acts_only_on_its_endpoint():
    operator = Principal("ops-search", Role.OPERATOR, endpoint="search")
    authorize(operator, Action.ACTIVATE, "search")
    authorize(operator, Action.READ, None)  # listings: the servicer filters them to the scope
    with pytest.raises(PermissionDenied, match="limited to endpoint 'search', not 'ads'"):
        authorize(operator, Action.ACTIVATE, "ads")
    agent = Principal("agents-search", Role.AGENT, endpoint="search")
    authorize(agent, Action.CONNECT, "search")
    with pytest.raises(PermissionDenied):
        authorize(agent, Action.CONNECT, "ads")


def test_a_scoped_admin_cannot_mint_tokens():
    admin = Principal("search-admin", Role.ADMIN, endpoint="search")
    authorize(admin, Action.ADMIN_ENDPOINTS, "search")
    with pytest.raises(PermissionDenied, match="may not create, list or revoke tokens"):
        authorize(admin, Action.ADMIN_TOKENS, None)


def test_auth_off_runs_as_an_unscoped_admin():
    assert ANONYMOUS.role is Role.ADMIN and ANONYMOUS.endpoint is None
    for action in Action:
        authorize(ANONYMOUS, action, "any")


def test_durations():
    assert parse_duration("90m").total_seconds() == 5400
    assert parse_duration("2w").days == 14
    for bad in ("", "10", "1y", "-5d", "0d", "99999999d"):
        with pytest.raises(InvalidArgument, match="expires"):
            parse_duration(bad)


def test_tokens_are_required_beyond_loopback_and_cannot_be_switched_off_there(tmp_path):
    from controlplane.app import ControlPlane

    url = f"sqlite:///{tmp_path / 'm.db'}"
    assert not ControlPlane(url, "127.0.0.1:0").auth_required
    assert ControlPlane(url, "127.0.0.1:0", auth="required").auth_required
    assert ControlPlane(url, "0.0.0.0:50051").auth_required
    assert ControlPlane(url, "[::1]:50051").auth_required is False
    with pytest.raises(InvalidArgument, match="auth: off is allowed only on loopback"):
        ControlPlane(url, "0.0.0.0:50051", auth="off")
