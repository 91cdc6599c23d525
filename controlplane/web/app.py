"""The dashboard's routes: pages, live regions, fragments and actions over the control plane's services.

The edge is as thin as the gRPC one: it reads the caller, checks CSRF and the API's roles, calls a
service in a worker thread and renders a template. Domain errors map to HTTP statuses in one table.
"""

from __future__ import annotations

import json
import pathlib
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import grpc
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from controlplane.api.idempotency import applied_once, request_key
from controlplane.auth import Action, Principal, authorize
from controlplane.blocking import run_blocking
from controlplane.web import views
from controlplane.web.access import CSRF_FIELD, Access, Session, clear_cookie, may, set_cookie
from controlplane.web.live import Live
from controlplane.web.pages import Pages
from mixprec.errors import FieldError, InvalidArgument, MixprecError, Unauthenticated, status_code
from mixprec.visible import visible, visible_json

HERE = pathlib.Path(__file__).parent
MAX_FORM_BYTES = 32_768
MAX_VERSION = 2**31 - 1

# gRPC status (mixprec.errors' one table) -> HTTP status.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
}

ROLLOUT_VERBS = {"pause": "paused", "resume": "resumed", "abort": "aborted", "promote": "promoted"}

SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                 b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """Nothing on the pages comes from elsewhere, runs inline, or may be framed."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _shown(value):
    """Every {{ value }} of every template: autoescaping makes it inert HTML, and control characters
    (ESC, bidi overrides such as U+202E, ...) from operators and agents are shown as escapes."""
    if isinstance(value, str) and not isinstance(value, Markup):  # Markup: an already rendered macro
        return visible(value, keep="\n\t")  # whitespace in HTML text, where it moves nothing
    return value


class VisibleJSONResponse(JSONResponse):
    """JSON whose strings carry control characters as \\u escapes (the page shows them as text)."""

    def render(self, content) -> bytes:
        return visible_json(content, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _templates() -> Jinja2Templates:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True, finalize=_shown)
    env.globals["new_request_id"] = lambda: f"web-{uuid.uuid4().hex}"  # one per rendered action form
    return Jinja2Templates(env=env)


def _version(request: Request, name: str, default: int = 0) -> int:
    text = request.query_params.get(name, "")
    if not text:
        return default
    if not text.isdigit() or not 1 <= int(text) <= MAX_VERSION:
        raise InvalidArgument(FieldError(name, f"{text[:20]!r} is not a version number"))
    return int(text)


def _rollback_target(text: str) -> tuple[int, bool]:
    """'' (last known good), 'base', or a version number."""
    if text in ("", "last-good"):
        return 0, False
    if text == "base":
        return 0, True
    if text.isdigit() and 1 <= int(text) <= MAX_VERSION:
        return int(text), False
    raise InvalidArgument(FieldError("target", f"{text[:20]!r} is neither last-good, base nor a version number"))


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


class Dashboard:
    """The Starlette application; `changed(endpoint)` pushes an endpoint's new target to its workers."""

    def __init__(self, pages: Pages, access: Access, changed: Callable[[str], Awaitable[object]],
                 live: Live | None = None):
        self.pages = pages
        self.access = access
        self.changed = changed
        self.live = live or Live()
        self.templates = _templates()
        routes = [
            Route("/", self.overview),
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/events", self.overview_events),
            Route("/endpoints/{name}", self.endpoint),
            Route("/endpoints/{name}/events", self.endpoint_events),
            Route("/endpoints/{name}/diff", self.diff),
            Route("/endpoints/{name}/sweep", self.sweep),
            Route("/endpoints/{name}/rollback/preview", self.rollback_preview),
            Route("/endpoints/{name}/rollback", self.rollback, methods=["POST"]),
            Route("/endpoints/{name}/rollout/{verb}", self.rollout_action, methods=["POST"]),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ]
        self.app = SecurityHeaders(Starlette(routes=routes, exception_handlers={MixprecError: self.error}))

    # --- who is asking -------------------------------------------------------------------------

    async def _caller(self, request: Request, action: Action = Action.READ, endpoint: str | None = None
                      ) -> tuple[Session | None, Principal]:
        session = self.access.session_of(request)
        principal = await run_blocking(self.access.principal, session)
        authorize(principal, action, endpoint)
        return session, principal

    def _render(self, request: Request, template: str, session: Session | None, principal: Principal,
                status: int = 200, **context) -> Response:
        fresh = session is None
        session = session or self.access.sessions.new()  # auth off: a session only for the CSRF token
        response = self.templates.TemplateResponse(request, template, status_code=status, context={
            "auth_required": self.access.required, **_seen_by(principal, session, context.get("endpoint_name")),
            **context,
        })
        if fresh:
            set_cookie(response, request, session)
        return response

    def _fragment(self, template: str, principal: Principal, session: Session | None, **context) -> str:
        return self.templates.get_template(template).render(
            **_seen_by(principal, session, context.get("endpoint_name")), **context)

    async def error(self, request: Request, err: MixprecError) -> Response:
        status = HTTP_STATUS.get(status_code(err), 500)
        navigating = (request.method == "GET" and "text/html" in request.headers.get("accept", "")
                      and not request.headers.get("x-fragment"))
        if isinstance(err, Unauthenticated) and navigating:
            return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
        if not navigating:
            return VisibleJSONResponse({"error": str(err)}, status_code=status)
        return self.templates.TemplateResponse(request, "error.html", status_code=status,
                                               context={"message": str(err), "status": status, "principal": None})

    # --- sessions ------------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        if not self.access.required:
            return RedirectResponse("/", status_code=303)
        return self._login_page(request, "")

    def _login_page(self, request: Request, message: str, status: int = 200) -> Response:
        session = self.access.session_of(request) or self.access.sessions.new()
        response = self.templates.TemplateResponse(request, "login.html", status_code=status, context={
            "message": message, "csrf": session.csrf, "next": _safe_next(request.query_params.get("next", "/")),
            "principal": None,
        })
        set_cookie(response, request, session)
        return response

    async def login(self, request: Request) -> Response:
        form = await _form(request)
        self.access.check_csrf(request, self.access.session_of(request), form)
        try:
            session, _ = await run_blocking(self.access.log_in, form.get("token", ""))
        except Unauthenticated as err:
            return self._login_page(request, str(err), status=401)
        old = self.access.session_of(request)
        if old is not None:
            self.access.sessions.drop(old)
        response = RedirectResponse(_safe_next(form.get("next", "/")), status_code=303)
        set_cookie(response, request, session)
        return response

    async def logout(self, request: Request) -> Response:
        session = self.access.session_of(request)
        self.access.check_csrf(request, session, await _form(request))
        self.access.sessions.drop(session)
        response = RedirectResponse("/login" if self.access.required else "/", status_code=303)
        clear_cookie(response, request)
        return response

    # --- pages ---------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        session, principal = await self._caller(request)
        rows = await run_blocking(self.pages.overview, principal)
        return self._render(request, "overview.html", session, principal, rows=rows)

    async def overview_events(self, request: Request) -> Response:
        session, _ = await self._caller(request)

        async def render() -> dict[str, str]:
            principal = await run_blocking(self.access.principal, session)
            rows = await run_blocking(self.pages.overview, principal)
            return {"endpoints": self._fragment("_overview_table.html", principal, session, rows=rows)}

        return EventSourceResponse(self.live.regions(render), ping=15)

    async def endpoint(self, request: Request) -> Response:
        name = request.path_params["name"]
        session, principal = await self._caller(request, Action.READ, name)
        state = await run_blocking(self.pages.endpoint_state, name)
        versions = [p.version for p in state.policies]
        to_version = _version(request, "to", versions[0] if versions else 0)
        from_version = _version(request, "from", _previous(versions, to_version))
        grid = None
        if to_version:
            grid = await run_blocking(self.pages.diff, name, from_version or to_version, to_version)
        sweep = await run_blocking(self.pages.sweep, name, _version(request, "sweep"))
        return self._render(request, "endpoint.html", session, principal, endpoint_name=name, state=state,
                            grid=grid, from_version=from_version or to_version, to_version=to_version, sweep=sweep,
                            sweep_versions=[p.version for p in state.policies if p.has_sweep],
                            notice=request.query_params.get("notice", "")[:300])

    async def endpoint_events(self, request: Request) -> Response:
        name = request.path_params["name"]
        session, _ = await self._caller(request, Action.READ, name)

        async def render() -> dict[str, str]:
            principal = await run_blocking(self.access.principal, session)
            authorize(principal, Action.READ, name)
            state = await run_blocking(self.pages.endpoint_state, name)
            context = {"endpoint_name": name, "state": state}
            return {region: self._fragment(f"_{region}.html", principal, session, **context)
                    for region in ("summary", "fleet", "rollout", "policies", "audit")}

        return EventSourceResponse(self.live.regions(render), ping=15)

    async def diff(self, request: Request) -> Response:
        name = request.path_params["name"]
        session, principal = await self._caller(request, Action.READ, name)
        from_version, to_version = _version(request, "from"), _version(request, "to")
        if not from_version or not to_version:
            raise InvalidArgument(FieldError("from" if not from_version else "to", "is required"))
        grid = await run_blocking(self.pages.diff, name, from_version, to_version)
        return Response(self._fragment("_grid.html", principal, session, grid=grid, from_version=from_version,
                                       to_version=to_version), media_type="text/html")

    async def sweep(self, request: Request) -> Response:
        name = request.path_params["name"]
        session, principal = await self._caller(request, Action.READ, name)
        view = await run_blocking(self.pages.sweep, name, _version(request, "version"))
        return Response(self._fragment("_sweep.html", principal, session, sweep=view), media_type="text/html")

    async def rollback_preview(self, request: Request) -> Response:
        name = request.path_params["name"]
        session, principal = await self._caller(request, Action.READ, name)
        to_version, to_base = _rollback_target(request.query_params.get("target", ""))
        preview, connected = await run_blocking(self.pages.preview_rollback, name, to_version, to_base)
        changed = [layer for layer, _, _ in preview.changes]
        grid = views.layer_grid(changed, {layer: new for layer, _, new in preview.changes},
                                {layer: old for layer, old, _ in preview.changes}) if changed else None
        return Response(self._fragment("_preview.html", principal, session, preview=preview, grid=grid,
                                       workers=connected), media_type="text/html")

    # --- actions -------------------------------------------------------------------------------

    async def _act(self, request: Request, action: Action) -> tuple[str, dict, Principal]:
        name = request.path_params["name"]
        form = await _form(request)
        session = self.access.session_of(request)
        self.access.check_csrf(request, session, form)
        _, principal = await self._caller(request, action, name)
        return name, form, principal

    def _done(self, request: Request, name: str, message: str) -> Response:
        self.live.poke()
        if _wants_json(request):
            return VisibleJSONResponse({"ok": True, "message": message})
        return RedirectResponse(f"/endpoints/{quote(name)}?notice={quote(message)}", status_code=303)

    async def _once(self, form: dict, method: str, principal: Principal, endpoint: str,
                    write: Callable[[], Awaitable[str]]) -> str:
        """An action applied once per form (a resubmitted or retried form gets the first answer)."""
        parameters = {k: str(v) for k, v in form.items() if k not in ("request_id", CSRF_FIELD)}
        key = request_key(str(form.get("request_id", "")), method, principal, endpoint,
                          json.dumps(parameters, sort_keys=True).encode())
        return await applied_once(self.pages.requests, key, None, write, str.encode, bytes.decode)

    async def rollback(self, request: Request) -> Response:
        name, form, principal = await self._act(request, Action.ROLLBACK)
        to_version, to_base = _rollback_target(form.get("target", ""))

        async def write() -> str:
            result = await run_blocking(self.pages.fleet.rollback, name, form.get("reason", ""), to_version, to_base,
                                        principal.name)
            await self.changed(name)
            return f"rolled back {name}: v{result.previous_version} → v{result.active_version}"

        return self._done(request, name, await self._once(form, "dashboard.rollback", principal, name, write))

    async def rollout_action(self, request: Request) -> Response:
        verb = request.path_params["verb"]
        if verb not in ROLLOUT_VERBS:
            raise InvalidArgument(FieldError("action", f"{verb[:20]!r} is not one of {', '.join(ROLLOUT_VERBS)}"))
        name, form, principal = await self._act(request, Action.ROLLOUT)

        async def write() -> str:
            rollout = await run_blocking(getattr(self.pages.rollouts, verb), name, principal.name,
                                         form.get("reason", ""))
            await self.changed(name)
            return f"rollout {rollout.id} of {name} {ROLLOUT_VERBS[verb]}: {rollout.message}"

        return self._done(request, name, await self._once(form, f"dashboard.rollout.{verb}", principal, name, write))


def _seen_by(principal: Principal, session: Session | None, endpoint: str | None) -> dict:
    """What every template knows of its viewer: who, the CSRF token, which action buttons to show."""
    return {"principal": principal, "csrf": session.csrf if session else "",
            "can_rollback": may(principal, Action.ROLLBACK, endpoint),
            "can_rollout": may(principal, Action.ROLLOUT, endpoint)}


def _previous(versions: list[int], version: int) -> int:
    older = [v for v in versions if v < version]
    return max(older, default=0)


def _safe_next(target: str) -> str:
    """Only a path on this dashboard (not //elsewhere or a URL) may be where a login leads."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


async def _form(request: Request) -> dict:
    length = request.headers.get("content-length")
    if length is None or not length.isdigit() or int(length) > MAX_FORM_BYTES:
        raise InvalidArgument(FieldError("body", f"must be a form of at most {MAX_FORM_BYTES} bytes with a length"))
    form = await request.form(max_files=0, max_fields=20)
    values = {k: v for k, v in form.items() if isinstance(v, str)}
    for key, value in values.items():
        if "\x00" in value:
            raise InvalidArgument(FieldError(key, "contains a NUL byte"))
    return values
