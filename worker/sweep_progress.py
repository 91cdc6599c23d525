"""A sweep's progress on a terminal: a bar whose ETA follows the work left, a line per combined check."""

from __future__ import annotations

from typing import TextIO

from tqdm import tqdm

from mixprec.visible import unfiltered
from worker.sweep import SweepProgress, SweepResult, Trial, Unit

# The bar counts estimated work (a staged run of a late layer costs a fraction of an early one's), so
# its own n/total are not layer counts: the postfix says which unit this is.
_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]{postfix}"


class SweepBar(SweepProgress):
    def __init__(self, metric: str, file: TextIO, indent: str = ""):
        self.metric, self.file, self.indent = metric, file, indent
        self.bar: tqdm | None = None
        self.done = self.total = 0

    def reference(self, texts: int) -> None:
        print(f"{self.indent}reference pass: base embeddings and activations of {texts} texts", file=self.file)

    def start(self, units: list[Unit], work: list[float]) -> None:
        self.total, self.done = len(units), 0
        kind = "layers" if all(len(u.layers) == 1 for u in units) else "groups"
        # The bar redraws its line with a carriage return: it writes to the terminal itself.
        self.bar = tqdm(total=sum(work), desc=f"{self.indent}sweeping {kind}", bar_format=_FORMAT,
                        file=unfiltered(self.file))

    def measured(self, unit: Unit, work: float) -> None:
        self.done += 1
        self.bar.set_postfix_str(f"{self.done}/{self.total} {unit.name} {self.metric} {unit.delta:+.2e}", refresh=False)
        self.bar.update(work)
        if self.done == self.total:
            self.bar.close()

    def estimated(self, units: list[Unit], seconds: float, correlation: float | None) -> None:
        print(f"{self.indent}estimated every unit's {self.metric} change in {seconds:.1f}s (one forward pass and "
              f"a backward pass per probe); measuring exactly only where a decision depends on it", file=self.file)

    def exact(self, unit: Unit, trial: Trial, why: str) -> None:
        print(f"{self.indent}measured {unit.name} at {trial.precision}: {trial.measured:.6f} (estimated "
              f"{trial.estimate:.6f}); {why}", file=self.file)

    def holdout(self, result: SweepResult) -> None:
        held = result.holdout
        print(f"{self.indent}held-out pairs ({held['pairs']}): the chosen map's {self.metric} worsening is "
              f"{held['drop']:.6f} (calibration {result.calibration_drop:.6f})", file=self.file)

    def combined(self, check: dict, max_drop: float, reverted: Unit | None) -> None:
        over = check["measured_drop"] > max_drop
        verdict = (f"over the budget {max_drop:g}: {reverted.name} {_moved(reverted)}" if reverted
                   else f"{'over' if over else 'within'} the budget {max_drop:g}")
        print(f"{self.indent}combined check, {len(check['units'])} unit(s) together: drop measured "
              f"{check['measured_drop']:.6f} (predicted {check['predicted_drop']:.6f}), {verdict}", file=self.file)

    def bound(self, check: dict, max_drop: float, reverted: Unit | None) -> None:
        print(f"{self.indent}bound check, {len(check['units'])} unit(s) together: drop measured "
              f"{check['measured_drop']:.6f}, bound {check['bound']:.6f} over the budget {max_drop:g}: "
              f"{reverted.name} {_moved(reverted)}", file=self.file)


def _moved(unit: Unit) -> str:
    """Where the combined check sends a unit: the next precision of its ladder it fits, else base."""
    return "moves down its ladder" if len(unit.trials) > 1 else "back to base"
