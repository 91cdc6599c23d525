"""A damaged worker state file: one clear log line, then the last good copy or base precision."""

from __future__ import annotations

import asyncio
import logging

from worker.state import AppliedAssignment, StateStore
from worker.sync import AgentIdentity, SyncLoop

LAYERS = ["layers.0.mlp.up_proj", "layers.0.mlp.down_proj"]


def restore(store: StateStore, refuse: bool = False) -> tuple[SyncLoop, list[int]]:
    applied = []

    async def apply(version, precision_map):
        if refuse:
            raise ValueError("layer layers.0.mlp.up_proj cannot run fp9")
        applied.append(version)

    loop = SyncLoop("127.0.0.1:1", AgentIdentity("emb", "w1", LAYERS), apply, state=store)
    asyncio.run(loop.restore())
    return loop, applied


def saved(tmp_path) -> StateStore:
    store = StateStore(tmp_path, "emb", "w1")
    store.save(AppliedAssignment("emb", 1, dict.fromkeys(LAYERS, "fp8")))
    store.save(AppliedAssignment("emb", 2, dict.fromkeys(LAYERS, "fp8-tensor")))
    return store


def test_a_damaged_state_file_falls_back_to_the_last_good_copy_with_one_log_line(tmp_path, caplog):
    store = saved(tmp_path)
    store.path.write_text('{"endpoint": "emb", "version": ')  # torn by a full disk, say
    with caplog.at_level(logging.INFO, logger="worker.sync"):
        loop, applied = restore(store)
    assert (loop.version, applied) == (1, [1]) and loop.precision_map == dict.fromkeys(LAYERS, "fp8")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and str(store.path) in errors[0] and "damaged" in errors[0]
    assert "starting at the last good copy (v1)" in errors[0]


def test_with_every_copy_damaged_the_worker_starts_at_base(tmp_path, caplog):
    store = saved(tmp_path)
    store.path.write_bytes(b"\xff\xfe")
    store.previous_path.write_text("[1, 2]")
    with caplog.at_level(logging.INFO, logger="worker.sync"):
        loop, applied = restore(store)
    assert (loop.version, applied, loop.precision_map) == (0, [], None)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and "starting at base precision" in errors[0]


def test_a_saved_map_this_worker_cannot_apply_starts_it_at_base(tmp_path, caplog):
    store = saved(tmp_path)
    with caplog.at_level(logging.INFO, logger="worker.sync"):
        loop, applied = restore(store, refuse=True)
    assert (loop.version, applied) == (0, [])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and "cannot apply" in errors[0] and "fp9" in errors[0]


def test_what_the_worker_saves_it_loads_back_version_0_included(tmp_path):
    store = StateStore(tmp_path, "emb", "w1")
    for saved_ in (AppliedAssignment("emb", 0, dict.fromkeys(LAYERS, "bf16"), "n" * 12),
                   AppliedAssignment("emb", 2**31 - 1, dict.fromkeys(LAYERS, "fp8"), "")):
        store.save(saved_)
        assert store.load_last_good() == (saved_, "")
