"""The dashboard in a real browser (Debian's Chromium driven by Playwright) against a real control plane
on port 0 with light agents: what the pages list, a rollback clicked through to the agents, rollout
buttons, and screenshots of every page under test-artifacts/dashboard/ (not kept in git)."""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
import shutil

import grpc
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from support import IN_CI, LightAgent, RunningControlPlane, eventually, rules, stubs

from mixprec.v1 import agent_pb2 as apb
from mixprec.v1 import agent_pb2_grpc, policy_pb2_grpc, rollout_pb2_grpc
from mixprec.v1 import policy_pb2 as pb
from mixprec.v1 import rollout_pb2 as rpb

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = pathlib.Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
CATALOG = [f"layers.{i}.{kind}" for i in range(6) for kind in (
    "attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj", "mlp.up_proj", "mlp.down_proj")]
WORKERS = ("worker-a", "worker-b", "worker-c")
LAPTOP = {"width": 1366, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser():
    """This machine's Chromium, never a downloaded one. Playwright's sync API holds an asyncio loop in the
    main thread while it runs, so it is stopped with this module: the tests after it run their own loops."""
    if CHROMIUM is None:
        missing = ("no Chromium installed (Debian: apt-get install chromium; `make test` installs it when it runs "
                   "as root): the dashboard's browser tests need it")
        if IN_CI:
            pytest.fail(missing, pytrace=False)
        pytest.skip(missing)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser):
    context = browser.new_context()
    yield context.new_page()
    context.close()


def sweep_artifact() -> str:
    """A sweep's JSON as `mixprec sweep --propose` stores it: per-layer drops, chosen layers, combined checks."""
    units = []
    for i, layer in enumerate(CATALOG):
        drop = 0.00002 * (1 + i % 6) * (1 + i // 6)
        units.append({"name": layer, "layers": [layer], "delta": -drop, "drop": drop, "deltas": {},
                      "chosen": drop <= 0.0003 and layer != "layers.4.mlp.up_proj",
                      "reverted": layer == "layers.4.mlp.up_proj"})
    return json.dumps({"model": "toy", "metric": "cosine_to_base", "precision": "fp8", "granularity": "layer",
                       "max_drop": 0.0003, "samples": 64, "units": units,
                       "combined": [{"units": [u["name"] for u in units if u["chosen"]], "predicted_drop": 0.0021,
                                     "measured_drop": 0.00028}],
                       "precision_map": {}, "seconds": 12.0, "strategy": "staged"})


class Plane:
    """A control plane with its dashboard, an endpoint with four versions, and three light agents."""

    def __init__(self, db_url: str):
        self.running = RunningControlPlane(db_url, http_listen="127.0.0.1:0", rollout_interval=0.1)
        self.url = f"http://127.0.0.1:{self.running.plane.dashboard.http.port}"
        channel = grpc.insecure_channel(self.running.address)
        self.policies = policy_pb2_grpc.PolicyServiceStub(channel)
        self.fleet = agent_pb2_grpc.FleetServiceStub(channel)
        self.rollouts = rollout_pb2_grpc.RolloutServiceStub(channel)
        self.agents: list[LightAgent] = []

    def call(self, coro):
        return self.running._call(coro)

    def start_agents(self, endpoint: str, workers=WORKERS) -> None:
        async def up():
            started = [LightAgent(self.running.address, endpoint, w, layers=CATALOG).start() for w in workers]
            for agent in started:
                await asyncio.wait_for(agent.loop.connected.wait(), 10)
            self.agents.extend(started)

        self.call(up())

    def applied(self) -> dict[str, int]:
        return {a.loop.identity.worker_id: a.loop.version for a in self.agents}

    def wait_all_on(self, version: int) -> None:
        self.call(eventually(lambda: set(self.applied().values()) == {version}, what=f"every agent on v{version}"))

    def stop(self) -> None:
        async def down():
            for agent in self.agents:
                await agent.stop()

        self.call(down())
        self.running.stop()


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    running = Plane(f"sqlite:///{tmp_path_factory.mktemp('dashboard') / 'mixprec.db'}")
    p = running.policies
    for name, model in (("ranker", "minilm"), ("search-embedder", "minilm")):
        p.CreateEndpoint(pb.CreateEndpointRequest(name=name, layers=CATALOG, model=model, actor="test"))
    p.CreateEndpoint(pb.CreateEndpointRequest(name="chat", model="gemma3", actor="test"))  # no catalog yet
    p.CreatePolicy(pb.CreatePolicyRequest(endpoint="ranker", parent_version=0, rules=rules(("layers.*.mlp.*", "fp8")),
                                          author="alice", message="MLP to FP8"))
    p.CreatePolicy(pb.CreatePolicyRequest(
        endpoint="ranker", parent_version=1, author="sweep", message="sensitivity sweep: cosine drop <= 0.0003",
        rules=rules(("layers.*", "fp8"), ("layers.*.attention.[qk]_proj", "fp8-tensor"), ("layers.5.*", "bf16"),
                    ("layers.4.mlp.up_proj", "fp8-weight-only")),
        artifact_json=sweep_artifact()))
    p.CreatePolicy(pb.CreatePolicyRequest(endpoint="ranker", parent_version=2, rules=rules(("layers.*", "fp8")),
                                          author="bob", message="everything FP8"))
    running.fleet.Activate(apb.ActivateRequest(endpoint="ranker", version=1, actor="test", reason="first"))
    running.fleet.Activate(apb.ActivateRequest(endpoint="ranker", version=2, actor="test", reason="the sweep's map"))
    running.start_agents("ranker")
    running.wait_all_on(2)
    yield running
    running.stop()


@pytest.fixture
def requests_seen(page: Page):
    seen: list[str] = []
    page.on("request", lambda request: seen.append(request.url))
    return seen


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_the_endpoints_page_lists_what_the_api_lists(plane, page: Page, requests_seen):
    page.set_viewport_size(LAPTOP)
    page.goto(plane.url + "/")
    listed = plane.policies.ListEndpoints(pb.ListEndpointsRequest()).endpoints
    rows = page.locator("table.endpoints tbody tr")
    expect(rows).to_have_count(len(listed))
    for endpoint, row in zip(listed, rows.all(), strict=True):
        expect(row.locator("th a")).to_have_text(endpoint.name)
        active = f"v{endpoint.active_version}" if endpoint.active_version else "base"
        expect(row.locator("td").nth(0)).to_contain_text(active)
    ranker = page.locator("tr", has=page.get_by_role("link", name="ranker", exact=True))
    expect(ranker).to_contain_text("3/3 connected")
    expect(ranker).to_contain_text("cosine_to_base")
    shot(page, "endpoints-laptop")
    page.set_viewport_size(PHONE)
    shot(page, "endpoints-phone")
    assert requests_seen and all(url.startswith(plane.url) for url in requests_seen), requests_seen


def test_a_rollback_clicked_with_a_reason_reaches_the_agents(plane, page: Page, requests_seen):
    page.set_viewport_size(LAPTOP)
    page.goto(plane.url + "/endpoints/ranker")
    fleet = page.locator('[data-region="fleet"] tbody tr')
    expect(fleet).to_have_count(len(WORKERS))
    expect(page.locator("#live")).to_have_text("live")
    shot(page, "endpoint-laptop")

    page.locator("#rollback-reason").fill("p99 doubled after v2")
    page.get_by_role("button", name="Roll back…").click()
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("from v2 to v1")
    changed = 5 * 4 + 1 + 2  # attention of blocks 0-4 back to bf16, layers.4.mlp.up_proj 8W -> 8, block 5's MLP
    expect(dialog).to_contain_text(f"{changed} layer(s) change precision")
    expect(dialog.locator("table.grid td.changed")).to_have_count(changed)
    shot(page, "rollback-preview")
    assert set(plane.applied().values()) == {2}  # a preview changes nothing

    dialog.get_by_role("button", name="Roll back now").click()
    for row in fleet.all():
        expect(row.locator("td.applied")).to_have_text("v1", timeout=2000)
    expect(page.locator("#active-version")).to_have_text("v1", timeout=2000)
    assert set(plane.applied().values()) == {1}
    expect(page.locator('[data-region="audit"] tbody tr').first).to_contain_text("p99 doubled after v2")
    expect(page.locator("#notice")).to_contain_text("v2 → v1")

    # A change made elsewhere (the CLI, a pipeline) shows up without a reload, pickers included.
    plane.fleet.Rollback(apb.RollbackRequest(endpoint="ranker", reason="drill", to_base=True))
    expect(page.locator("#active-version")).to_have_text("v4", timeout=2000)
    for row in fleet.all():
        expect(row.locator("td.applied")).to_have_text("v4", timeout=2000)
    expect(page.locator("#diff-to option")).to_have_count(4)
    expect(page.locator('#rollback-target option[value="1"]')).to_have_count(1)
    expect(page.locator('#rollback-target option[value="4"]')).to_have_count(0)  # active now
    assert all(url.startswith(plane.url) for url in requests_seen), requests_seen


def test_policy_diff_and_sweep_render_as_grid_and_chart(plane, page: Page):
    page.set_viewport_size(LAPTOP)
    page.goto(plane.url + "/endpoints/ranker#policies")
    page.locator("#diff-from").select_option("1")
    page.locator("#diff-to").select_option("3")
    page.get_by_role("button", name="Compare").click()
    grid = page.locator("#diff-grid")
    expect(grid).to_contain_text("v1 → v3: 24 of 36 layers change precision")
    expect(grid.locator("td.changed")).to_have_count(24)
    expect(grid.locator("td.changed").first).to_have_text("B→8")
    page.locator("#policies").screenshot(path=str(SHOTS / "policy-diff.png"))
    sweep = page.locator("#sweep")
    expect(sweep.locator("svg rect.bar")).to_have_count(len(CATALOG))
    expect(sweep).to_contain_text("budget 0.0003")
    sweep.locator("summary").click()
    expect(sweep.locator("table.sweep tbody tr")).to_have_count(len(CATALOG))
    expect(sweep.locator("table.sweep")).to_contain_text("bf16 (combined check)")
    sweep.screenshot(path=str(SHOTS / "sweep.png"))


def test_rollout_buttons_pause_resume_and_promote(plane, page: Page):
    plane.policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="search-embedder", parent_version=0,
                                                       rules=rules(("layers.*.mlp.*", "fp8"))))
    plane.policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="search-embedder", parent_version=1,
                                                       rules=rules(("layers.*", "fp8"))))
    plane.fleet.Activate(apb.ActivateRequest(endpoint="search-embedder", version=1))
    plane.start_agents("search-embedder", ("embed-1", "embed-2"))
    plane.rollouts.StartRollout(rpb.StartRolloutRequest(
        endpoint="search-embedder", version=2, steps=[rpb.RolloutStep(workers=1), rpb.RolloutStep(percent=100)],
        guardrails=rpb.Guardrails(max_drop={"cosine_to_base": 0.05}, reports_per_step=1, bake_seconds=3600)))
    page.set_viewport_size(LAPTOP)
    page.goto(plane.url + "/endpoints/search-embedder#rollout")
    rollout = page.locator('[data-region="rollout"]')
    expect(rollout.locator("table.checks tbody tr").first).to_contain_text("max_drop[cosine_to_base]")
    expect(rollout.locator("table.checks tbody tr").first).to_contain_text("≤ 0.05")
    expect(rollout.locator(".timeline li").first).to_contain_text("waiting")
    page.locator("#rollout").screenshot(path=str(SHOTS / "rollout.png"))

    rollout.get_by_role("button", name="Pause").click()
    page.locator("#confirm-reason").fill("watching the canary")
    page.keyboard.press("Enter")  # the keyboard confirms
    expect(rollout.locator(".badge").first).to_contain_text("paused", timeout=2000)
    rollout.get_by_role("button", name="Resume").click()
    page.keyboard.press("Escape")  # and Esc cancels: still paused
    expect(page.locator("dialog#confirm")).to_be_hidden()
    expect(rollout.locator(".badge").first).to_contain_text("paused")
    rollout.get_by_role("button", name="Resume").click()
    page.locator("dialog#confirm").get_by_role("button", name="Resume").click()
    expect(rollout.locator(".badge").first).to_contain_text("running", timeout=2000)

    page.set_viewport_size(PHONE)
    shot(page, "endpoint-phone")
    page.set_viewport_size(LAPTOP)
    rollout.get_by_role("button", name="Promote").click()
    page.locator("dialog#confirm").get_by_role("button", name="Promote").click()
    expect(rollout.locator(".badge").first).to_contain_text("succeeded", timeout=2000)
    for row in page.locator('[data-region="fleet"] tbody tr').all():
        expect(row.locator("td.applied")).to_have_text("v2", timeout=2000)
    assert plane.policies.GetEndpoint(pb.GetEndpointRequest(name="search-embedder")).active_version == 2
    audit = page.locator('[data-region="audit"]')
    expect(audit).to_contain_text("rollout.promote")
    expect(audit).to_contain_text("rollout.paused")


def test_every_control_is_reachable_by_keyboard(plane, page: Page):
    page.set_viewport_size(LAPTOP)
    page.goto(plane.url + "/endpoints/ranker")
    reached = set()
    for _ in range(40):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("document.activeElement.id || document.activeElement.textContent.trim()"))
    assert {"rollback-target", "rollback-reason", "Roll back…", "diff-from", "diff-to", "Compare"} <= reached, reached


def test_bad_input_gets_a_clear_status_and_writes_nothing(plane, page: Page):
    page.goto(plane.url + "/endpoints/chat")  # no catalog, no version, no worker yet: says what to do
    expect(page.locator('[data-region="fleet"]')).to_contain_text("No worker has connected yet")
    expect(page.locator("#policies")).to_contain_text("mixprec policy create chat")
    page.goto(plane.url + "/endpoints/nope")
    expect(page.locator("main")).to_contain_text("endpoint 'nope' does not exist")
    response = page.request.get(plane.url + "/endpoints/ranker/diff?from=1&to=x")
    assert response.status == 400 and "to" in response.json()["error"]
    page.goto(plane.url + "/endpoints/ranker")
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    before = plane.policies.GetEndpoint(pb.GetEndpointRequest(name="ranker")).active_version
    no_reason = page.request.post(plane.url + "/endpoints/ranker/rollback", form={"target": "1", "reason": " "},
                                  headers={"X-CSRF-Token": csrf, "Accept": "application/json"})
    assert no_reason.status == 400 and "reason" in no_reason.json()["error"]
    no_csrf = page.request.post(plane.url + "/endpoints/ranker/rollback", form={"target": "1", "reason": "x"},
                                headers={"Accept": "application/json"})
    assert no_csrf.status == 403 and "CSRF" in no_csrf.json()["error"]
    assert plane.policies.GetEndpoint(pb.GetEndpointRequest(name="ranker")).active_version == before
    assert re.search(r"default-src 'self'", page.request.get(plane.url + "/").headers["content-security-policy"])


def test_a_resubmitted_action_form_is_applied_once(plane, page: Page):
    p = plane.policies
    p.CreateEndpoint(pb.CreateEndpointRequest(name="resubmit", layers=CATALOG))
    for parent in range(3):
        p.CreatePolicy(pb.CreatePolicyRequest(endpoint="resubmit", parent_version=parent,
                                              rules=rules((f"layers.{parent}.*", "fp8"))))
        plane.fleet.Activate(apb.ActivateRequest(endpoint="resubmit", version=parent + 1))
    page.goto(plane.url + "/endpoints/resubmit")
    rendered = page.locator('#rollback-form input[name="request_id"]').get_attribute("value")
    assert rendered.startswith("web-")
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")

    def roll_back(request_id: str):
        return page.request.post(plane.url + "/endpoints/resubmit/rollback",
                                 form={"target": "last-good", "reason": "p99", "request_id": request_id},
                                 headers={"X-CSRF-Token": csrf, "Accept": "application/json"})

    first, again = roll_back(rendered), roll_back(rendered)  # the same form sent twice
    assert first.status == again.status == 200 and first.json() == again.json()
    assert "v3 → v2" in first.json()["message"]
    assert p.GetEndpoint(pb.GetEndpointRequest(name="resubmit")).active_version == 2
    assert "v2 → v1" in roll_back("web-another-form").json()["message"]  # a new form is a new action
    rollbacks = [e for e in plane.fleet.ListAudit(apb.ListAuditRequest(endpoint="resubmit")).entries
                 if e.action == "rollback"]
    assert len(rollbacks) == 2


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """A control plane whose API and dashboard both require tokens; one endpoint on v2 of two versions."""
    running = RunningControlPlane(f"sqlite:///{tmp_path_factory.mktemp('secured') / 'mixprec.db'}",
                                  http_listen="127.0.0.1:0", auth="required")
    tokens = {role: running.plane.tokens.create(f"{role}-token", role)[0] for role in ("viewer", "operator", "admin")}
    policies, fleet = stubs(running.address, tokens["admin"])
    policies.CreateEndpoint(pb.CreateEndpointRequest(name="ranker", layers=CATALOG))
    for parent, spec in enumerate((("layers.*.mlp.*", "fp8"), ("layers.*", "fp8"))):
        policies.CreatePolicy(pb.CreatePolicyRequest(endpoint="ranker", parent_version=parent, rules=rules(spec)))
        fleet.Activate(apb.ActivateRequest(endpoint="ranker", version=parent + 1))
    policies.CreateEndpoint(pb.CreateEndpointRequest(name="search", layers=CATALOG))
    tokens["scoped"] = running.plane.tokens.create("search-viewer", "viewer", endpoint="search")[0]
    running.url = f"http://127.0.0.1:{running.plane.dashboard.http.port}"
    running.tokens = tokens
    running.active = lambda: policies.GetEndpoint(pb.GetEndpointRequest(name="ranker")).active_version
    yield running
    running.stop()


def log_in(page: Page, url: str, token: str) -> None:
    page.goto(url + "/endpoints/ranker")
    expect(page).to_have_url(re.compile(r"/login\?next=/endpoints/ranker$"))
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(url + "/endpoints/ranker")


def test_a_viewer_sees_no_action_buttons_and_a_forged_action_is_refused(secured, page: Page):
    page.set_viewport_size(LAPTOP)
    page.goto(secured.url + "/")
    expect(page).to_have_url(re.compile(r"/login"))
    page.get_by_label("API token").fill("mxp_" + "x" * 43)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("token")
    shot(page, "login")

    log_in(page, secured.url, secured.tokens["viewer"])
    expect(page.locator(".who")).to_contain_text("viewer-token viewer")
    expect(page.locator('[data-region="fleet"]')).to_be_visible()
    for name in ("Roll back…", "Pause", "Resume", "Abort", "Promote"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    cookie = next(c for c in page.context.cookies() if c["name"] == "mixprec_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]  # plain HTTP here
    shot(page, "endpoint-viewer")

    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    for path in ("/endpoints/ranker/rollback", "/endpoints/ranker/rollout/abort"):
        forged = page.request.post(secured.url + path, form={"target": "1", "reason": "forged"},
                                   headers={"X-CSRF-Token": csrf, "Accept": "application/json"})
        assert forged.status == 403 and "role viewer" in forged.json()["error"], forged.text()
    assert secured.active() == 2

    secured.plane.tokens.revoke("viewer-token")
    after = page.request.get(secured.url + "/endpoints/ranker", headers={"Accept": "text/html"})
    assert re.search(r"/login\?next=/endpoints/ranker$", after.url)  # a revoked token ends its session


def test_an_operator_rolls_back_and_the_audit_log_names_the_token(secured, page: Page):
    log_in(page, secured.url, secured.tokens["operator"])
    page.locator("#rollback-reason").fill("operator drill")
    page.get_by_role("button", name="Roll back…").click()
    page.locator("dialog#confirm").get_by_role("button", name="Roll back now").click()
    expect(page.locator("#active-version")).to_have_text("v1", timeout=2000)
    first = page.locator('[data-region="audit"] tbody tr').first
    expect(first).to_contain_text("operator-token")
    expect(first).to_contain_text("operator drill")
    assert secured.active() == 1
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login"))
    assert page.request.get(secured.url + "/events").status == 401


def test_a_token_scoped_to_one_endpoint_sees_what_the_api_shows_it(secured, page: Page):
    page.goto(secured.url + "/login")
    page.get_by_label("API token").fill(secured.tokens["scoped"])
    page.get_by_role("button", name="Log in").click()
    listed = stubs(secured.address, secured.tokens["scoped"])[0].ListEndpoints(pb.ListEndpointsRequest()).endpoints
    assert [e.name for e in listed] == ["search"]
    expect(page.locator("table.endpoints tbody th a")).to_have_text(["search"])
    page.goto(secured.url + "/endpoints/ranker")
    expect(page.locator("main")).to_contain_text("limited to endpoint 'search'")
