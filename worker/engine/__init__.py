"""The hybrid-precision engine: every quantizable linear layer runs in BF16 or FP8, switched by name."""

from worker.engine.engine import HybridEngine, LayerStatus, PassCancelled

__all__ = ["HybridEngine", "LayerStatus", "PassCancelled"]
