"""Body pose encoder: an MLP over per-frame keypoints normalised to the body."""

from __future__ import annotations

import torch
from torch import nn

from dfew_mm.config import PoseEncoderConfig
from dfew_mm.constants import LEFT_SHOULDER, N_POSE_LANDMARKS, POSE_CHANNELS, RIGHT_SHOULDER

MIN_SHOULDER_WIDTH = 1e-2  # normalised image units; guards frames where the shoulders coincide
MAX_COORD = 10.0  # shoulder widths; clamps landmarks that MediaPipe guesses far off-screen


def normalise_pose(pose: torch.Tensor) -> torch.Tensor:
    """(..., 33, 4) x, y, z, visibility -> same shape, xyz centred on the shoulders in shoulder widths."""
    xyz, visibility = pose[..., :3], pose[..., 3:]
    left, right = xyz[..., LEFT_SHOULDER, :], xyz[..., RIGHT_SHOULDER, :]  # (..., 3)
    centre = (left + right) / 2
    width = (left[..., :2] - right[..., :2]).norm(dim=-1).clamp_min(MIN_SHOULDER_WIDTH)  # (...,)
    xyz = (xyz - centre.unsqueeze(-2)) / width[..., None, None]
    return torch.cat([xyz.clamp(-MAX_COORD, MAX_COORD), visibility], dim=-1)


class PoseEncoder(nn.Module):
    """(B, T, 33, 4) keypoints -> (B, T, D) per-frame features."""

    pretrained = False

    def __init__(self, cfg: PoseEncoderConfig):
        super().__init__()
        layers: list[nn.Module] = []
        width = N_POSE_LANDMARKS * POSE_CHANNELS
        for _ in range(cfg.layers):
            layers += [nn.Linear(width, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout)]
            width = cfg.hidden
        self.mlp = nn.Sequential(nn.LayerNorm(N_POSE_LANDMARKS * POSE_CHANNELS), *layers)
        self.output_dim = width

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        x = normalise_pose(pose.float()).flatten(-2)  # (B, T, 132)
        return self.mlp(x)  # (B, T, D)


def build_pose_encoder(cfg: PoseEncoderConfig) -> PoseEncoder:
    return PoseEncoder(cfg)
