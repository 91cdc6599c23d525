"""The token a bootstrap token issued a worker: kept 0600 in the state directory, never a crash."""

from __future__ import annotations

import os
import stat

from worker.credentials import IssuedToken

TOKEN = "mxp_" + "a" * 43


def test_the_issued_token_is_kept_readable_by_its_user_only(tmp_path):
    kept = IssuedToken(tmp_path / "state", "emb", "w1")
    assert kept.load() is None
    assert kept.keep(TOKEN) == str(kept.path)
    assert stat.S_IMODE(os.stat(kept.path).st_mode) == 0o600
    assert IssuedToken(tmp_path / "state", "emb", "w1").load() == TOKEN
    assert IssuedToken(tmp_path / "state", "emb", "w2").load() is None  # one file per worker id
    kept.discard()
    assert kept.load() is None


def test_a_damaged_or_unwritable_token_file_costs_a_log_line(tmp_path, caplog):
    kept = IssuedToken(tmp_path, "emb", "w1")
    kept.path.write_text("not a token\n")
    assert kept.load() is None and "holds no mixprec token" in caplog.text
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert IssuedToken(blocked, "emb", "w1").keep(TOKEN) == "memory only"  # its directory is a file
    assert "cannot write this worker's token" in caplog.text
