"""Small models for engine tests and for the generic adapter (`toy_models:make_mlp`)."""

from __future__ import annotations

import time

import torch
from torch import nn


class SlowStack(nn.Module):
    """Linear layers with a pause between them, so a switch can land in the middle of a pass."""

    def __init__(self, depth: int = 6, width: int = 64, pause: float = 0.0005):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.pause = pause

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
            time.sleep(self.pause)
        return x


def make_mlp() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
