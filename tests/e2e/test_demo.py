"""`mixprec demo`, the README's first command, end to end: it must finish well and end with its summary."""

from __future__ import annotations

import subprocess

import pytest
from processes import ENV, MIXPREC

pytestmark = pytest.mark.slow


def test_the_demo_tells_the_whole_story_and_ends_with_the_summary():
    done = subprocess.run([*MIXPREC, "demo"], capture_output=True, text=True, timeout=600, env=ENV)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for milestone in ("dashboard: http://127.0.0.1:", "sensitivity sweep", "proposed as policy v1", "[SUCCEEDED] v1 passed every step",
                      "[ROLLED_BACK] rolled back at step", "max_drop[cosine_to_base] measured",
                      "one call, every worker", "0 failed"):
        assert milestone in out, milestone
    tail = out.rstrip().splitlines()[-5:]
    assert tail[0].startswith("STEP") and "OUTCOME" in tail[0]
    assert [line.split()[0] for line in tail[1:]] == ["sweep", "rollout", "rollout", "one-call"]
    assert "SUCCEEDED" in tail[2] and "ROLLED_BACK" in tail[3]
