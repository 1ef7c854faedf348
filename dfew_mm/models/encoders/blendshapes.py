"""Face blendshapes: an MLP over the 52 FaceLandmarker expression scores of each frame.

Store: `blendshapes` (T, 52) float32, written by extraction with `--blendshapes`. The scores
(0..1, e.g. mouthSmileLeft, browDownRight) are an expression signal the landmarker learned from
real faces; they need no normalisation beyond a LayerNorm. Training-time augmentation (`data.augment`,
`model.blendshapes.aug`): the clip's horizontal flip swaps every ...Left score with its ...Right one (as
the flipped faces), and Gaussian jitter on the scores of the valid frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch

from dfew_mm.constants import BLENDSHAPE_NAMES, N_BLENDSHAPES
from dfew_mm.models.encoders.base import MLP_RANGES, Augmentation, Encoder, Frames, Tokens, mirror_order, per_frame_mlp

MIRROR = mirror_order(BLENDSHAPE_NAMES, "Left", "Right")  # score order of the mirrored face


@dataclass
class BlendshapeAugmentConfig:
    """`model.blendshapes.aug`: training-time augmentation of a clip's scores (`data.augment`)."""

    jitter: float = 0.02  # std of the Gaussian noise on each score (0..1) per frame; clipped to 0..1


@dataclass
class BlendshapeEncoderConfig:
    hidden: int = 128
    layers: int = 2
    dropout: float = 0.1
    aug: BlendshapeAugmentConfig = field(default_factory=BlendshapeAugmentConfig)


class BlendshapeEncoder(Encoder):
    """Sample: blendshapes (T, 52) float32 scores, blendshapes_mask (T,) bool, valid where a face was found and
    the landmarker scored it (the store holds zeros elsewhere). Tokens: (B, T, D) per frame."""

    name = "blendshapes"
    Config = BlendshapeEncoderConfig
    default = False  # a default extraction does not write the array
    extract_option = "blendshapes"
    ranges = {**MLP_RANGES, "aug.jitter": (0.0, 1.0, False)}

    @classmethod
    def store_arrays(cls, cfg: BlendshapeEncoderConfig) -> tuple[str, ...]:
        return ("blendshapes", "face_mask")

    @classmethod
    def cut(cls, cfg: BlendshapeEncoderConfig, arrays: Mapping[str, np.ndarray],
            frames: Frames) -> dict[str, torch.Tensor]:
        if not frames.stored:
            return cls.absent(cfg, frames)
        scores = np.asarray(arrays["blendshapes"][frames.index], dtype=np.float32)  # (T, 52)
        valid = frames.mask(arrays["face_mask"]) & torch.from_numpy(scores.any(-1))  # (T,)
        return {"blendshapes": torch.from_numpy(scores), "blendshapes_mask": valid}

    @classmethod
    def absent(cls, cfg: BlendshapeEncoderConfig, frames: Frames) -> dict[str, torch.Tensor]:
        return {"blendshapes": torch.zeros(frames.data.frames, N_BLENDSHAPES), "blendshapes_mask": frames.none()}

    @classmethod
    def augment(cls, cfg: BlendshapeEncoderConfig, part: dict, aug: Augmentation) -> dict:
        """The clip's flip and score jitter on the valid frames; the others stay zeros (numpy, as pose)."""
        scores, valid = part["blendshapes"].numpy(), part["blendshapes_mask"].numpy()  # (T, 52), (T,)
        out = scores[:, MIRROR] if aug.flip else scores
        if cfg.aug.jitter:
            noise = aug.rng.standard_normal(scores.shape, dtype=np.float32) * np.float32(cfg.aug.jitter)
            out = np.clip(out + noise, 0.0, 1.0)
        return {**part, "blendshapes": torch.from_numpy(np.where(valid[:, None], out, scores))}

    def __init__(self, cfg: BlendshapeEncoderConfig):
        super().__init__(cfg)
        self.mlp, self.output_dim = per_frame_mlp(N_BLENDSHAPES, cfg)

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return self.mlp(scores.float())  # (B, T, 52) -> (B, T, D)

    def encode(self, batch) -> Tokens:
        return self(batch["blendshapes"]), batch["blendshapes_mask"], batch["frame_time"]
