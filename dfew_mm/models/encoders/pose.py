"""Body pose: an MLP over per-frame MediaPipe keypoints normalised to the body.

Store: `pose` (T, 33, 4) float32 x, y, z, visibility and `pose_mask` (T,).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from dfew_mm.constants import LEFT_SHOULDER, N_POSE_LANDMARKS, POSE_CHANNELS, RIGHT_SHOULDER
from dfew_mm.models.encoders.base import MLP_RANGES, Encoder, Frames, Tokens, per_frame_mlp

MIN_SHOULDER_WIDTH = 1e-2  # normalised image units; guards frames where the shoulders coincide
MAX_COORD = 10.0  # shoulder widths; clamps landmarks that MediaPipe guesses far off-screen


@dataclass
class PoseEncoderConfig:
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.1


def normalise_pose(pose: torch.Tensor) -> torch.Tensor:
    """(..., 33, 4) x, y, z, visibility -> same shape, xyz centred on the shoulders in shoulder widths."""
    xyz, visibility = pose[..., :3], pose[..., 3:]
    left, right = xyz[..., LEFT_SHOULDER, :], xyz[..., RIGHT_SHOULDER, :]  # (..., 3)
    centre = (left + right) / 2
    width = (left[..., :2] - right[..., :2]).norm(dim=-1).clamp_min(MIN_SHOULDER_WIDTH)  # (...,)
    xyz = (xyz - centre.unsqueeze(-2)) / width[..., None, None]
    return torch.cat([xyz.clamp(-MAX_COORD, MAX_COORD), visibility], dim=-1)


class PoseEncoder(Encoder):
    """Sample: pose (T, 33, 4) float32, pose_mask (T,) bool, a body was found. Tokens: (B, T, D) per frame."""

    name = "pose"
    Config = PoseEncoderConfig
    ranges = MLP_RANGES

    @classmethod
    def store_arrays(cls, cfg: PoseEncoderConfig) -> tuple[str, ...]:
        return ("pose", "pose_mask")

    @classmethod
    def cut(cls, cfg: PoseEncoderConfig, arrays: Mapping[str, np.ndarray], frames: Frames) -> dict[str, torch.Tensor]:
        if not frames.stored:
            return cls.absent(cfg, frames)
        pose = torch.from_numpy(np.asarray(arrays["pose"][frames.index], dtype=np.float32))  # (T, 33, 4)
        return {"pose": pose, "pose_mask": frames.mask(arrays["pose_mask"])}

    @classmethod
    def absent(cls, cfg: PoseEncoderConfig, frames: Frames) -> dict[str, torch.Tensor]:
        return {"pose": torch.zeros(frames.data.frames, N_POSE_LANDMARKS, POSE_CHANNELS), "pose_mask": frames.none()}

    def __init__(self, cfg: PoseEncoderConfig):
        super().__init__(cfg)
        self.mlp, self.output_dim = per_frame_mlp(N_POSE_LANDMARKS * POSE_CHANNELS, cfg)

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        x = normalise_pose(pose.float()).flatten(-2)  # (B, T, 132)
        return self.mlp(x)  # (B, T, D)

    def encode(self, batch) -> Tokens:
        return self(batch["pose"]), batch["pose_mask"], batch["frame_time"]
