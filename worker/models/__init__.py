"""Model adapters: load a model and name its quantizable layers canonically."""

from worker.models.registry import LoadedModel, load_model

__all__ = ["LoadedModel", "load_model"]
