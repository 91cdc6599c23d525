"""Identity and authorization of the control plane's callers.

`Authenticator.authenticate(token) -> Principal` (Unauthenticated otherwise) and
`authorize(principal, action, endpoint)` (PermissionDenied otherwise) are the two checks every
edge (gRPC, the dashboard) makes; `TokenService` creates, lists and revokes tokens.
"""

from controlplane.auth.roles import ALLOWED, ANONYMOUS, Action, Principal, Role, authorize
from controlplane.auth.tokens import Authenticator, TokenService, parse_duration

__all__ = [
    "ALLOWED", "ANONYMOUS", "Action", "Authenticator", "Principal", "Role", "TokenService", "authorize",
    "parse_duration",
]
