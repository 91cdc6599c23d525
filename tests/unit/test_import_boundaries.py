"""`pip install mixprec` (no torch) must run the control plane and every non-model CLI command."""

from __future__ import annotations

import subprocess
import sys


def test_the_control_plane_and_the_cli_do_not_import_torch():
    code = (
        "import sys; import controlplane.app, mixprec.cli.main as m; m.build_parser(); "
        "import worker.sync, worker.state, mixprec.families; "
        "bad = [n for n in ('torch', 'transformers') if n in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
