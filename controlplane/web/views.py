"""What the dashboard shows, as plain values for the templates: built from domain objects, no I/O.

Every status has a word and a symbol besides its colour, so that the pages read without colour too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from controlplane import domain
from controlplane.services.fleet import Target
from mixprec.hardware import hardware_text
from mixprec.metrics import METRICS, limit_word, worsening
from mixprec.sweep_summary import quality_lines

# Precision -> (short text in a grid cell, what it means); the CSS gives each a colour and a pattern.
PRECISION_LABELS = {
    "bf16": ("B", "bf16 (base)"),
    "fp8": ("8", "fp8, per-channel scales"),
    "fp8-tensor": ("8T", "fp8, one scale per tensor"),
    "fp8-weight-only": ("8W", "fp8 weights, bf16 compute"),
}
NEAR_LIMIT = 0.8  # a worsening above this share of its limit is shown as a warning


@dataclass(frozen=True)
class Verdict:
    """A status with a word and a symbol (for people who cannot tell the colours apart) and a CSS class."""

    word: str
    symbol: str
    css: str


OK = Verdict("ok", "✓", "ok")
NEAR = Verdict("near limit", "!", "warn")
BROKEN = Verdict("over limit", "✗", "bad")
UNGUARDED = Verdict("no guardrail", "–", "muted")


def age(at: datetime | None, now: datetime | None = None) -> str:
    if at is None:
        return "-"
    now = now or datetime.now(timezone.utc)
    at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    seconds = max(0, int((now - at).total_seconds()))
    if seconds < 90:
        return f"{seconds}s ago"
    if seconds < 90 * 60:
        return f"{seconds // 60}m ago"
    if seconds < 48 * 3600:
        return f"{seconds // 3600}h ago"
    return at.strftime("%Y-%m-%d %H:%M")


def clock(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S")


# --- quality against guardrails ------------------------------------------------------------------


@dataclass(frozen=True)
class QualityCell:
    metric: str
    delta: float
    worse: float  # how much worse than base (positive = worse), per the metric's direction
    limit: float | None
    verdict: Verdict

    @property
    def text(self) -> str:
        limit = f" / {limit_word(self.metric)} ≤ {self.limit:g}" if self.limit is not None else ""
        return f"{self.delta:+.5f}{limit}"


def judge(metric: str, delta: float, guardrails: Mapping[str, float]) -> QualityCell | None:
    if metric not in METRICS or not math.isfinite(delta):
        return None  # a metric this control plane does not know cannot be judged
    worse = worsening(metric, delta)
    limit = guardrails.get(metric)
    if limit is None:
        verdict = UNGUARDED
    elif worse > limit:
        verdict = BROKEN
    elif worse > NEAR_LIMIT * limit:
        verdict = NEAR
    else:
        verdict = OK
    return QualityCell(metric, delta, worse, limit, verdict)


def quality_cells(report: Mapping, guardrails: Mapping[str, float]) -> list[QualityCell]:
    cells = [judge(m, float(d), guardrails) for m, d in sorted(report.get("deltas", {}).items())]
    return [c for c in cells if c is not None]


def guardrails_of(rollout: domain.Rollout | None) -> dict[str, float]:
    return dict(rollout.guardrails.max_drop) if rollout else {}


def worst_quality(workers: Sequence[domain.WorkerState], guardrails: Mapping[str, float]) -> QualityCell | None:
    """The connected workers' worst delta: of a guarded metric if there is one, else of the sharpest signal."""
    cells = [c for w in workers if w.connected for c in quality_cells(w.last_quality, guardrails)]
    guarded = [c for c in cells if c.limit is not None]
    if guarded:
        return max(guarded, key=lambda c: c.worse / c.limit if c.limit else (math.inf if c.worse > 0 else 0))
    sharpest = [c for c in cells if c.metric == "cosine_to_base"] or cells
    return max(sharpest, key=lambda c: c.worse, default=None)


# --- the endpoints overview ----------------------------------------------------------------------


@dataclass(frozen=True)
class RolloutPhase:
    text: str
    verdict: Verdict


def rollout_phase(rollout: domain.Rollout | None) -> RolloutPhase:
    if rollout is None:
        return RolloutPhase("no rollout yet", Verdict("none", "–", "muted"))
    where = f"v{rollout.from_version} → v{rollout.to_version}, step {rollout.current_step + 1}/{len(rollout.steps)}"
    if rollout.state == "RUNNING":
        return RolloutPhase(f"running: {where}", Verdict("running", "▶", "info"))
    if rollout.state == "PAUSED":
        return RolloutPhase(f"paused: {where}", Verdict("paused", "⏸", "warn"))
    if rollout.state == "SUCCEEDED":
        return RolloutPhase(f"v{rollout.to_version} succeeded", Verdict("succeeded", "✓", "ok"))
    return RolloutPhase(f"v{rollout.to_version} {rollout.state.lower().replace('_', ' ')}",
                        Verdict(rollout.state.lower().replace("_", " "), "↶", "bad"))


def refusing(workers: Sequence[domain.WorkerState], target: Target) -> int:
    """Workers whose latest answer to the version they are asked to run was a NACK."""
    return sum(1 for w in workers if w.last_nack_error and w.last_nack_version == target.version_for(w.worker_id))


@dataclass(frozen=True)
class OverviewRow:
    name: str
    model: str
    active_version: int
    latest_version: int
    phase: RolloutPhase
    connected: int
    workers: int
    nacks: int
    worst: QualityCell | None


def overview_row(endpoint: domain.Endpoint, workers: Sequence[domain.WorkerState], target: Target,
                 rollout: domain.Rollout | None) -> OverviewRow:
    return OverviewRow(
        name=endpoint.name, model=endpoint.model or "-", active_version=endpoint.active_version,
        latest_version=endpoint.latest_version, phase=rollout_phase(rollout),
        connected=sum(w.connected for w in workers), workers=len(workers), nacks=refusing(workers, target),
        worst=worst_quality(workers, guardrails_of(rollout)),
    )


# --- the fleet table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetRow:
    worker: str
    connected: bool
    applied: int
    wanted: int
    side: str  # "new" / "old" during a rollout, "" otherwise
    answer: str
    answer_verdict: Verdict
    quality: list[QualityCell]
    quality_version: int | None
    throughput: str
    latency: str
    hardware: str  # device, dtype, and whether a real FP8 GEMM runs (mixprec.hardware)
    seen: str


def fleet_rows(workers: Sequence[domain.WorkerState], target: Target, rollout: domain.Rollout | None
               ) -> list[FleetRow]:
    guardrails = guardrails_of(rollout if rollout and rollout.open else None)
    rows = []
    for w in workers:
        wanted = target.version_for(w.worker_id)
        if w.last_nack_error and w.last_nack_version == wanted:
            answer, verdict = f"NACK v{w.last_nack_version}: {w.last_nack_error[:120]}", BROKEN
        elif w.last_ack_version or w.applied_version == wanted:
            in_sync = w.applied_version == wanted
            answer = f"ACK v{w.last_ack_version}" if w.last_ack_version else "running what it has"
            verdict = OK if in_sync else Verdict("applying", "…", "info")
        else:
            answer, verdict = "no answer yet", Verdict("waiting", "…", "info")
        serving = w.last_serving or {}
        side = ""
        if rollout and rollout.open:
            side = "new" if w.worker_id in rollout.new_workers else "old"
        rows.append(FleetRow(
            worker=w.worker_id, connected=w.connected, applied=w.applied_version, wanted=wanted, side=side,
            answer=answer, answer_verdict=verdict, quality=quality_cells(w.last_quality, guardrails),
            quality_version=w.last_quality.get("version", 0) if w.last_quality else None,
            throughput=f"{float(serving['throughput']):.1f}" if "throughput" in serving else "-",
            latency=(f"{float(serving.get('latency_p50_ms', 0)):.1f} / {float(serving.get('latency_p99_ms', 0)):.1f}"
                     if serving else "-"),
            hardware=hardware_text(str(w.hardware.get("device") or ""), str(w.hardware.get("dtype") or ""),
                                   str(w.hardware.get("kernel") or ""), bool(w.hardware.get("fp8_kernel"))),
            seen=age(w.last_seen),
        ))
    return rows


# --- the rollout timeline ------------------------------------------------------------------------


@dataclass(frozen=True)
class TimelineStep:
    label: str
    status: Verdict
    detail: str


@dataclass(frozen=True)
class CheckRow:
    worker: str
    guardrail: str
    measured: str
    limit: str
    verdict: Verdict


@dataclass(frozen=True)
class RolloutView:
    rollout: domain.Rollout
    phase: RolloutPhase
    steps: list[TimelineStep]
    checks: list[CheckRow]
    guardrails: list[str]
    can_pause: bool
    can_resume: bool
    is_open: bool


def _step_label(step: domain.RolloutStep, fleet: int) -> str:
    size = step.size(fleet) if fleet else None
    base = f"{step.workers} worker{'s' if step.workers != 1 else ''}" if step.workers else f"{step.percent:g}%"
    return f"{base} ({size} of {fleet})" if size is not None and not step.workers else base


def rollout_view(rollout: domain.Rollout, fleet_size: int) -> RolloutView:
    steps = []
    for i, step in enumerate(rollout.steps):
        if rollout.state == "SUCCEEDED" or i < rollout.current_step:
            status, detail = Verdict("passed", "✓", "ok"), ""
        elif i == rollout.current_step and rollout.state in ("ROLLED_BACK", "ABORTED"):
            status, detail = Verdict(rollout.state.lower().replace("_", " "), "✗", "bad"), ""
        elif i == rollout.current_step:
            word = "waiting" if rollout.state == "RUNNING" else "paused"
            status = Verdict(word, "▶" if word == "waiting" else "⏸", "info" if word == "waiting" else "warn")
            detail = f"{len(rollout.new_workers)} worker(s) on v{rollout.to_version}"
        else:
            status, detail = Verdict("not reached", "○", "muted"), ""
        steps.append(TimelineStep(_step_label(step, fleet_size), status, detail))
    checks = []
    for c in rollout.last_checks:
        relation = "≤" if str(c.get("guardrail", "")).startswith("max_drop") else "≥"
        measured = float(c.get("measured", math.nan))
        checks.append(CheckRow(
            worker=str(c.get("worker_id", "")), guardrail=str(c.get("guardrail", "")),
            measured="not reported" if math.isnan(measured) else f"{measured:.6g}",
            limit=f"{relation} {float(c.get('limit', 0)):g}", verdict=OK if c.get("passed") else BROKEN,
        ))
    g = rollout.guardrails
    guardrails = [f"{metric}: {limit_word(metric) if metric in METRICS else 'drop'} ≤ {limit:g}"
                  for metric, limit in sorted(g.max_drop.items())]
    if g.min_throughput_ratio:
        guardrails.append(f"throughput new/old ≥ {g.min_throughput_ratio:g}")
    guardrails.append(f"{g.reports_per_step} report(s) per step, bake {g.bake_seconds:g}s, "
                      f"{g.max_failed_checks} failed check(s) tolerated, step timeout {g.step_timeout_seconds:g}s")
    return RolloutView(rollout, rollout_phase(rollout), steps, checks, guardrails,
                       can_pause=rollout.state == "RUNNING", can_resume=rollout.state == "PAUSED",
                       is_open=rollout.open)


# --- the layer grid ------------------------------------------------------------------------------

_BLOCK = re.compile(r"^layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class GridCell:
    layer: str
    before: str | None  # None: no comparison
    after: str

    @property
    def changed(self) -> bool:
        return self.before is not None and self.before != self.after

    @property
    def text(self) -> str:
        after = PRECISION_LABELS.get(self.after, (self.after, ""))[0]
        if self.changed:
            return f"{PRECISION_LABELS.get(self.before, (self.before, ''))[0]}→{after}"
        return after

    @property
    def title(self) -> str:
        if self.changed:
            return f"{self.layer}: {self.before} → {self.after}"
        return f"{self.layer}: {self.after}"

    @property
    def css(self) -> str:
        return "p-" + re.sub(r"[^a-z0-9-]", "", self.after)


@dataclass(frozen=True)
class LayerGrid:
    columns: list[tuple[str, str]]  # projections: (attention.q_proj, q)
    rows: list[tuple[str, list[GridCell | None]]]  # block label, one cell per column
    others: list[GridCell]          # layers outside blocks (pooler.dense, head)
    changed: int
    total: int
    legend: list[tuple[str, str, str]] = field(default_factory=list)  # css, short text, meaning


def short_column(name: str) -> str:
    """'attention.q_proj' -> 'q', 'mlp.down_proj' -> 'down', 'kv_cache' -> 'kv'."""
    leaf = name.rsplit(".", 1)[-1]
    return {"kv_cache": "kv"}.get(leaf, leaf.removesuffix("_proj"))


def layer_grid(catalog: Sequence[str], after: Mapping[str, str], before: Mapping[str, str] | None = None
               ) -> LayerGrid:
    """Blocks as rows, projections as columns; with `before`, each cell also says what it was."""
    columns: dict[str, None] = {}
    blocks: dict[int, dict[str, GridCell]] = {}
    others = []
    for layer in catalog:
        cell = GridCell(layer, before.get(layer) if before is not None else None, after[layer])
        m = _BLOCK.match(layer)
        if m:
            columns.setdefault(m.group(2))
            blocks.setdefault(int(m.group(1)), {})[m.group(2)] = cell
        else:
            others.append(cell)
    rows = [(f"block {i}", [blocks[i].get(c) for c in columns]) for i in sorted(blocks)]
    cells = [c for _, row in rows for c in row if c] + others
    used = sorted({c.after for c in cells} | {c.before for c in cells if c.before})
    legend = [("p-" + p, *PRECISION_LABELS.get(p, (p, p))) for p in used]
    return LayerGrid([(c, short_column(c)) for c in columns], rows, others, sum(c.changed for c in cells), len(cells), legend)


# --- the sweep -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepBar:
    name: str
    drop: float
    verdict: str  # "fp8" / "bf16" / "bf16 (combined check)"
    css: str
    y: int
    width: float


@dataclass(frozen=True)
class SweepView:
    version: int
    metric: str
    precision: str
    granularity: str
    budget: float | None
    samples: int
    bars: list[SweepBar]
    budget_x: float | None
    height: int
    ticks: list[tuple[float, str]]
    combined: list[str]
    chosen: int
    quality: list[str] = field(default_factory=list)  # calibration, held out and their bounds (mixprec.sweep_summary)
    overfit: bool = False  # the held-out drop exceeds the calibration bound


CHART_WIDTH = 420  # bar area in SVG user units; the SVG scales to its container
ROW_HEIGHT = 16


def sweep_view(version: int, data: Mapping) -> SweepView:
    """A stored sweep (the JSON `mixprec sweep --propose` keeps with the version) as chart and table."""
    units = list(data.get("units", []))
    budget = data.get("max_drop")
    budget = float(budget) if isinstance(budget, (int, float)) and math.isfinite(budget) else None
    drops = [float(u.get("drop", 0.0)) for u in units]
    scale_max = max([*drops, budget or 0.0, 1e-12])
    bars = []
    for i, unit in enumerate(units):
        drop = float(unit.get("drop", 0.0))
        if unit.get("chosen"):
            verdict, css = str(data.get("precision", "fp8")), "chosen"
        elif unit.get("reverted"):
            verdict, css = "bf16 (combined check)", "reverted"
        else:
            verdict, css = "bf16", "kept"
        bars.append(SweepBar(str(unit.get("name", "?")), drop, verdict, css, i * ROW_HEIGHT,
                             max(0.0, drop) / scale_max * CHART_WIDTH))
    ticks = [(f * CHART_WIDTH, f"{f * scale_max:.2g}") for f in (0.0, 0.25, 0.5, 0.75, 1.0)]
    combined = [f"combined check of {len(c.get('units', []))} unit(s): predicted drop "
                f"{float(c.get('predicted_drop', 0)):.6f}, measured {float(c.get('measured_drop', 0)):.6f}"
                for c in data.get("combined", [])]
    quality, overfit = quality_lines(data)
    return SweepView(
        quality=quality, overfit=overfit, version=version, metric=str(data.get("metric", "?")), precision=str(data.get("precision", "fp8")),
        granularity=str(data.get("granularity", "layer")), budget=budget, samples=int(data.get("samples", 0)),
        bars=bars, budget_x=budget / scale_max * CHART_WIDTH if budget is not None else None,
        height=max(1, len(bars)) * ROW_HEIGHT, ticks=ticks, combined=combined,
        chosen=sum(1 for u in units if u.get("chosen")),
    )
