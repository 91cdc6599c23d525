"""What the dashboard shows, built from domain values: verdicts by metric direction, the layer grid,
the rollout timeline, the sweep chart."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from controlplane import domain
from controlplane.services.fleet import Target
from controlplane.web import views
from controlplane.web.access import SessionStore
from controlplane.web.live import Live
from mixprec.errors import NotFound, ResourceExhausted

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def worker(worker_id, deltas, connected=True, applied=1, nack=(0, "")):
    return domain.WorkerState(
        endpoint="emb", worker_id=worker_id, connected=connected, applied_version=applied, last_ack_version=applied,
        last_nack_version=nack[0], last_nack_error=nack[1], hardware={}, inference_address="",
        last_quality={"version": applied, "deltas": deltas} if deltas else {}, last_serving={},
        first_seen=NOW, last_seen=NOW)


def test_verdicts_follow_each_metrics_direction():
    limits = {"cosine_to_base": 0.001, "perplexity": 0.5}
    assert views.judge("cosine_to_base", -0.0005, limits).verdict == views.OK
    assert views.judge("cosine_to_base", -0.0009, limits).verdict == views.NEAR
    assert views.judge("cosine_to_base", -0.002, limits).verdict == views.BROKEN
    assert views.judge("perplexity", -3.0, limits).verdict == views.OK  # lower perplexity is better
    assert views.judge("perplexity", 0.7, limits).verdict == views.BROKEN
    assert views.judge("mrr", -0.3, limits).verdict == views.UNGUARDED
    assert views.judge("made_up", -1.0, limits) is None
    assert "drop ≤ 0.001" in views.judge("cosine_to_base", -0.0005, limits).text
    assert "rise ≤ 0.5" in views.judge("perplexity", 0.1, limits).text


def test_worst_quality_is_the_guarded_metric_closest_to_its_limit_among_connected_workers():
    workers = [
        worker("a", {"cosine_to_base": -0.0004, "mrr": -0.2}),
        worker("b", {"cosine_to_base": -0.0008}),
        worker("gone", {"cosine_to_base": -0.5}, connected=False),
    ]
    worst = views.worst_quality(workers, {"cosine_to_base": 0.001})
    assert (worst.metric, worst.delta, worst.verdict) == ("cosine_to_base", -0.0008, views.OK)
    unguarded = views.worst_quality(workers, {})
    assert (unguarded.metric, unguarded.delta) == ("cosine_to_base", -0.0008)
    assert views.worst_quality([], {}) is None


def test_layer_grid_has_blocks_as_rows_projections_as_columns_and_marks_changes():
    catalog = [f"layers.{i}.{p}" for i in range(2) for p in ("attention.q_proj", "mlp.up_proj", "kv_cache")]
    catalog.append("pooler.dense")
    before = dict.fromkeys(catalog, "bf16")
    after = {**before, "layers.1.mlp.up_proj": "fp8", "pooler.dense": "fp8-tensor"}
    grid = views.layer_grid(catalog, after, before)
    assert grid.columns == [("attention.q_proj", "q"), ("mlp.up_proj", "up"), ("kv_cache", "kv")]
    assert [label for label, _ in grid.rows] == ["block 0", "block 1"]
    changed = grid.rows[1][1][1]
    assert (changed.text, changed.css, changed.changed) == ("B→8", "p-fp8", True)
    assert grid.rows[0][1][0].text == "B" and not grid.rows[0][1][0].changed
    assert [c.layer for c in grid.others] == ["pooler.dense"] and grid.others[0].text == "B→8T"
    assert (grid.changed, grid.total) == (2, 7)
    assert [css for css, _, _ in grid.legend] == ["p-bf16", "p-fp8", "p-fp8-tensor"]
    sparse = views.layer_grid(["layers.3.mlp.up_proj"], {"layers.3.mlp.up_proj": "fp8"})
    assert sparse.rows == [("block 3", [views.GridCell("layers.3.mlp.up_proj", None, "fp8")])]


def rollout(state="RUNNING", step=1, checks=()):
    return domain.Rollout(
        id=7, endpoint="emb", from_version=1, to_version=2,
        steps=(domain.RolloutStep(workers=1), domain.RolloutStep(percent=50), domain.RolloutStep(percent=100)),
        guardrails=domain.Guardrails(max_drop={"cosine_to_base": 0.001}, min_throughput_ratio=0.9),
        state=state, current_step=step, failed_checks=0, last_report_id=0, message="", new_workers=("a", "b"),
        last_checks=tuple(checks), actor="ops", revision=0, created_at=NOW, step_started_at=NOW, updated_at=NOW)


def test_rollout_timeline_marks_passed_current_and_pending_steps_and_checks_against_limits():
    view = views.rollout_view(rollout(checks=[
        {"worker_id": "a", "guardrail": "max_drop[cosine_to_base]", "measured": 0.002, "limit": 0.001, "passed": False},
        {"worker_id": "fleet", "guardrail": "min_throughput_ratio", "measured": 0.95, "limit": 0.9, "passed": True},
    ]), fleet_size=4)
    assert [s.status.word for s in view.steps] == ["passed", "waiting", "not reached"]
    assert [s.label for s in view.steps] == ["1 worker", "50% (2 of 4)", "100% (4 of 4)"]
    assert view.steps[1].detail == "2 worker(s) on v2"
    assert [(c.measured, c.limit, c.verdict) for c in view.checks] == [
        ("0.002", "≤ 0.001", views.BROKEN), ("0.95", "≥ 0.9", views.OK)]
    assert view.can_pause and not view.can_resume and view.is_open
    rolled_back = views.rollout_view(rollout("ROLLED_BACK"), 4)
    assert [s.status.css for s in rolled_back.steps] == ["ok", "bad", "muted"] and not rolled_back.is_open
    assert [s.status.word for s in views.rollout_view(rollout("SUCCEEDED", 2), 4).steps] == ["passed"] * 3


def test_fleet_rows_say_who_refuses_what_and_which_side_of_a_rollout_they_are_on():
    target = Target("emb", 1, {}, {"b": 2})
    rows = views.fleet_rows([worker("a", {"cosine_to_base": -0.0001}),
                             worker("b", None, nack=(2, "layer x cannot run fp8"))], target,
                            replace(rollout(), new_workers=("b",)))
    assert (rows[0].side, rows[0].answer, rows[0].answer_verdict) == ("old", "ACK v1", views.OK)
    assert rows[1].side == "new" and rows[1].answer.startswith("NACK v2: layer x") and rows[1].wanted == 2
    assert views.refusing([worker("b", None, nack=(2, "x"))], target) == 1
    assert views.refusing([worker("b", None, nack=(2, "x"))], replace(target, overrides={})) == 0


def test_fleet_rows_say_each_workers_device_dtype_and_whether_a_real_fp8_gemm_runs():
    gpu = {"device": "cuda:0 NVIDIA H200", "dtype": "bfloat16", "kernel": "scaled_mm", "fp8_kernel": True}
    cpu = {"device": "cpu", "dtype": "float32", "kernel": "scaled_mm (cpu reference)", "fp8_kernel": False}
    workers = [replace(worker(name, None), hardware=hardware) for name, hardware in (("g", gpu), ("c", cpu), ("x", {}))]
    rows = views.fleet_rows(workers, Target("emb", 1, {}, {}), None)
    assert [r.hardware for r in rows] == ["cuda:0 NVIDIA H200 · bfloat16 · scaled_mm: FP8 GEMM",
                                          "cpu · float32 · scaled_mm (cpu reference): no FP8 GEMM", "-"]


def test_sweep_view_scales_bars_to_the_largest_drop_or_the_budget():
    data = {"metric": "cosine_to_base", "precision": "fp8", "granularity": "layer", "max_drop": 0.002,
            "samples": 16, "units": [{"name": "a", "drop": 0.001, "chosen": True},
                                     {"name": "b", "drop": 0.004, "reverted": True}, {"name": "c", "drop": -0.001}],
            "combined": [{"units": ["a"], "predicted_drop": 0.001, "measured_drop": 0.0012}]}
    view = views.sweep_view(3, data)
    assert [(b.verdict, b.css) for b in view.bars] == [("fp8", "chosen"), ("bf16 (combined check)", "reverted"),
                                                        ("bf16", "kept")]
    assert [b.width for b in view.bars] == [views.CHART_WIDTH / 4, views.CHART_WIDTH, 0.0]
    assert view.budget_x == views.CHART_WIDTH / 2 and view.chosen == 1
    assert view.combined == ["combined check of 1 unit(s): predicted drop 0.001000, measured 0.001200"]
    assert views.sweep_view(3, {"max_drop": "inf", "units": []}).budget is None


def test_sweep_view_shows_calibration_held_out_and_bound_side_by_side_and_warns_of_an_overfit_map():
    data = {"metric": "log_loss", "direction": "lower", "samples": 48, "confidence": 0.95, "calibration_bound": 0.004,
            "units": [], "combined": [{"units": ["a"], "predicted_drop": 0.002, "measured_drop": 0.003, "final": True}],
            "holdout": {"pairs": 16, "items": 16, "drop": 0.006, "bound": 0.009, "overfit": True,
                        "note": "the held-out 0.006 exceeds the calibration bound 0.004"},
            "data": {"path": "q.jsonl", "format": "jsonl", "records": 64, "bytes": 900, "sha256": "ab" * 32}}
    view = views.sweep_view(2, data)
    assert view.quality == [
        "calibration rise (48 pairs or windows): measured 0.003000 (predicted 0.002000), 95% bound 0.004000",
        "held-out rise (16 texts the sweep never saw, 16 items): measured 0.006000, 95% bound 0.009000",
        "warning: the held-out 0.006 exceeds the calibration bound 0.004",
        "data: q.jsonl (jsonl, 64 records, 900 bytes, sha256 abababababababab...)"]
    assert view.overfit
    hostile = views.sweep_view(2, {"holdout": {"drop": "x"}, "combined": [{"final": True}], "calibration_bound": float("nan")})
    assert hostile.quality == [] and not hostile.overfit


def test_live_regions_send_only_what_changed_and_are_bounded_in_number():
    pages = [{"a": "1", "b": "x"}, {"a": "2", "b": "x"}, NotFound("endpoint 'e' does not exist")]

    async def render():
        page = pages.pop(0)
        if isinstance(page, Exception):
            raise page
        return page

    async def scenario():
        live = Live(interval=0.01, max_streams=1)
        stream = live.regions(render)
        events = [await anext(stream), await anext(stream)]
        with pytest.raises(ResourceExhausted):
            live.regions(render)
        events.append(await anext(stream))  # region a changed; b did not
        events.append(await anext(stream))  # the endpoint is gone: the stream says so and ends
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        assert live.open_streams == 0
        return events

    events = asyncio.run(scenario())
    assert [(e["event"], e["data"]) for e in events] == [
        ("region", '{"id": "a", "html": "1"}'), ("region", '{"id": "b", "html": "x"}'),
        ("region", '{"id": "a", "html": "2"}'), ("gone", "endpoint 'e' does not exist")]


def test_sessions_without_a_token_cannot_evict_logged_in_ones():
    store = SessionStore(limit=2)
    logged_in = store.new("mxp_secret")
    for _ in range(5):
        store.new()
    assert store.get(logged_in.id) is logged_in
    newest = [store.new("t2"), store.new("t3")]
    assert store.get(logged_in.id) is None and all(store.get(s.id) is s for s in newest)  # oldest goes first
    store.drop(newest[0])
    assert store.get(newest[0].id) is None
    idle = SessionStore(idle_seconds=-1)
    assert idle.get(idle.new("mxp_secret").id) is None  # idle for longer than allowed
