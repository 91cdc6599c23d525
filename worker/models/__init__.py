"""Model adapters, one module per family, each naming its own layers; `registry` says which loads what."""

from worker.models.loaded import LoadedModel
from worker.models.registry import load_model

__all__ = ["LoadedModel", "load_model"]
