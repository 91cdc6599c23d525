"""mixprec: per-layer FP8/BF16 precision policies for served neural networks."""

__version__ = "0.1.0"
