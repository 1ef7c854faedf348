"""Face blendshape encoder: an MLP over the 52 FaceLandmarker expression scores of each frame.

The scores (0..1, e.g. mouthSmileLeft, browDownRight) are an expression signal the landmarker
learned from real faces; they need no normalisation beyond a LayerNorm.
"""

from __future__ import annotations

import torch
from torch import nn

from dfew_mm.config import BlendshapeEncoderConfig
from dfew_mm.constants import N_BLENDSHAPES


class BlendshapeEncoder(nn.Module):
    """(B, T, 52) scores -> (B, T, D) per-frame features."""

    pretrained = False

    def __init__(self, cfg: BlendshapeEncoderConfig):
        super().__init__()
        layers: list[nn.Module] = []
        width = N_BLENDSHAPES
        for _ in range(cfg.layers):
            layers += [nn.Linear(width, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout)]
            width = cfg.hidden
        self.mlp = nn.Sequential(nn.LayerNorm(N_BLENDSHAPES), *layers)
        self.output_dim = width

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return self.mlp(scores.float())  # (B, T, D)
