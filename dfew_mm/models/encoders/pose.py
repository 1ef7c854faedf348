"""Body pose: an MLP over per-frame MediaPipe keypoints normalised to the body.

Store: `pose` (T, 33, 4) float32 x, y, z, visibility and `pose_mask` (T,). Training-time augmentation
(`data.augment`, `model.pose.aug`): the clip's horizontal flip (x mirrored, left and right landmarks
swapped, as the flipped faces) and Gaussian jitter of every landmark, scaled by the frame's shoulder width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch

from dfew_mm.constants import LEFT_SHOULDER, N_POSE_LANDMARKS, POSE_CHANNELS, POSE_LANDMARK_NAMES, RIGHT_SHOULDER
from dfew_mm.models.encoders.base import MLP_RANGES, Augmentation, Encoder, Frames, Tokens, mirror_order, per_frame_mlp

MIN_SHOULDER_WIDTH = 1e-2  # normalised image units; guards frames where the shoulders coincide
MAX_COORD = 10.0  # shoulder widths; clamps landmarks that MediaPipe guesses far off-screen

MIRROR = mirror_order(POSE_LANDMARK_NAMES, "left", "right")  # landmark order of the mirrored body


@dataclass
class PoseAugmentConfig:
    """`model.pose.aug`: training-time augmentation of a clip's keypoints (`data.augment`)."""

    jitter: float = 0.02  # std of the Gaussian noise on each landmark's x, y, z per frame, in shoulder widths


@dataclass
class PoseEncoderConfig:
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.1
    aug: PoseAugmentConfig = field(default_factory=PoseAugmentConfig)


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
    ranges = {**MLP_RANGES, "aug.jitter": (0.0, 1.0, False)}

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

    @classmethod
    def augment(cls, cfg: PoseEncoderConfig, part: dict, aug: Augmentation) -> dict:
        """The clip's flip and landmark jitter on the frames with a body; the others stay zeros. In numpy:
        on arrays this small, each torch call costs more than the arithmetic."""
        pose, valid = part["pose"].numpy(), part["pose_mask"].numpy()  # (T, 33, 4), (T,)
        out = pose[:, MIRROR] if aug.flip else pose.copy()
        if aug.flip:  # the mirror image: x -> 1 - x, and the left landmarks became the right ones
            out[..., 0] = 1.0 - out[..., 0]
        if cfg.aug.jitter:
            width = np.linalg.norm(pose[:, LEFT_SHOULDER, :2] - pose[:, RIGHT_SHOULDER, :2], axis=-1)  # (T,)
            scale = (cfg.aug.jitter * np.maximum(width, MIN_SHOULDER_WIDTH)).astype(np.float32)  # image units
            noise = aug.rng.standard_normal((len(pose), N_POSE_LANDMARKS, 3), dtype=np.float32)
            out[..., :3] += noise * scale[:, None, None]
        return {**part, "pose": torch.from_numpy(np.where(valid[:, None, None], out, pose))}

    def __init__(self, cfg: PoseEncoderConfig):
        super().__init__(cfg)
        self.mlp, self.output_dim = per_frame_mlp(N_POSE_LANDMARKS * POSE_CHANNELS, cfg)

    def forward(self, pose: torch.Tensor) -> torch.Tensor:
        x = normalise_pose(pose.float()).flatten(-2)  # (B, T, 132)
        return self.mlp(x)  # (B, T, D)

    def encode(self, batch) -> Tokens:
        return self(batch["pose"]), batch["pose_mask"], batch["frame_time"]
