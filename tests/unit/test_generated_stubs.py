"""The committed stubs in mixprec/v1 are exactly what scripts/gen_proto.py generates."""

from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_committed_stubs_match_the_generator(tmp_path):
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    gen_proto = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_proto)
    generated = {p.name: p.read_text() for p in gen_proto.generate(tmp_path)}
    committed = {p.name: p.read_text() for p in (ROOT / "mixprec" / "v1").glob("*.py*")}
    assert set(generated) == set(committed), "run `make proto` and commit mixprec/v1"
    stale = sorted(name for name in generated if generated[name] != committed[name])
    assert not stale, f"stale generated stubs {stale}: run `make proto` and commit mixprec/v1"
