"""Shared fixtures for the engine tests: the real MiniLM model, loaded once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def minilm():
    from worker.models import load_model

    return load_model("minilm")


@pytest.fixture(scope="session")
def minilm_engine(minilm):
    from worker.engine import HybridEngine

    return HybridEngine(minilm.module, minilm.layer_map)


@pytest.fixture
def engine_at_base(minilm_engine):
    minilm_engine.apply({}, tag=0)
    yield minilm_engine
    minilm_engine.apply({}, tag=0)
