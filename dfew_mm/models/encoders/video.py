"""Face video: a vision backbone (`model.video.arch`, see dfew_mm.models.backbones) on every face crop.

Store: `faces` (T, S, S, 3) uint8 crops and `face_mask` (T,). Preprocessing happens here, on
device, from the backbone's own settings (`backbone.spec`): resize the uint8 faces so that their
side is the backbone's resize size (bilinear or bicubic, antialiased, rounded to whole grey levels
as an 8-bit image processor does), centre-crop to its input size, normalise with its mean and std.
`model.video.input_size` runs the backbone at another size (the same crop ratio),
`model.video.crop_pct` changes the crop ratio, and `model.video.normalise` picks per-image
standardisation or ImageNet statistics instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from dfew_mm.errors import ConfigError, StoreError
from dfew_mm.models.backbones import VisionSpec, build_vision_backbone, vision_family, vision_spec
from dfew_mm.models.backbones.resnet import IMAGENET_MEAN, IMAGENET_STD
from dfew_mm.models.encoders.base import REEXTRACT, BackboneConfig, Encoder, Frames, Tokens, check_tuning

PER_IMAGE_EPS = 1.0  # grey levels; keeps a blank (all-zero, masked) crop finite
NORMALISE = ("backbone", "imagenet", "per_image")
MAX_FACE_UPSCALE = 1.5  # resize side / stored face side; 112 px faces serve backbones resizing to <= 168 px


@dataclass
class VideoEncoderConfig(BackboneConfig):
    # resnet18 | resnet34 | resnet50 (torchvision), timm/<model name>, hf/<Hugging Face repo id or local folder>
    arch: str = "resnet18"
    input_size: int = 0  # px the backbone sees; 0: its own input size (ResNets: as stored)
    crop_pct: float = 0.0  # centre-crop share after resizing; 0: the backbone's own (1 / its resize ratio), 1: no crop
    # backbone: the backbone's own mean/std (what pretrained weights expect); imagenet: ImageNet mean/std;
    # per_image: each face crop to zero mean, unit variance, which makes a from-scratch backbone blind to
    # exposure (low light)
    normalise: str = "backbone"  # backbone | imagenet | per_image


def face_geometry(spec: VisionSpec, cfg: VideoEncoderConfig, stored: int | None) -> tuple[int | None, int | None]:
    """(resize side, crop side) in px for faces stored at `stored` px (None: not known yet).

    The crop is `model.video.input_size`, else the backbone's input size, else the stored size;
    the resize keeps the backbone's resize/crop ratio (1 / crop_pct), or `model.video.crop_pct`.
    """
    crop = cfg.input_size or spec.size or stored
    if crop is None:
        return None, None
    if cfg.crop_pct:
        ratio = 1.0 / cfg.crop_pct
    else:
        ratio = spec.resize / spec.size if spec.size and spec.resize else 1.0
    return max(crop, round(crop * ratio)), crop


class VideoEncoder(Encoder):
    """Sample: video (T, 3, S, S) uint8 RGB face crops (a channels-last view of the stored (T, S, S, 3)),
    video_mask (T,) bool, a face was found in that frame. Tokens: (B, T, D) per-frame features."""

    name = "video"
    Config = VideoEncoderConfig
    cacheable = True
    ranges = {"input_size": (0, 1024, False)}

    @classmethod
    def check_config(cls, cfg: VideoEncoderConfig, data=None) -> None:
        vision_family(cfg.arch)
        check_tuning(cfg, "model.video")
        if cfg.normalise not in NORMALISE:
            raise ConfigError(f"model.video.normalise={cfg.normalise!r} is not one of {', '.join(NORMALISE)}")

    @classmethod
    def store_arrays(cls, cfg: VideoEncoderConfig) -> tuple[str, ...]:
        return ("faces", "face_mask")

    @classmethod
    def store_problems(cls, cfg: VideoEncoderConfig, face_size: int, arrays) -> list[str]:
        """Beyond missing arrays: a backbone may upsample the stored faces by at most MAX_FACE_UPSCALE;
        beyond that it sees interpolation blur where its weights expect detail."""
        problems = super().store_problems(cfg, face_size, arrays)
        spec = vision_spec(cfg)
        resize, crop = face_geometry(spec, cfg, face_size)
        if resize / face_size > MAX_FACE_UPSCALE:
            problems.append(
                f"model.video.arch={cfg.arch} resizes faces to {resize} px (input {crop} px, "
                f"{spec.source}), {resize / face_size:.1f}x the store's {face_size} px faces (at most "
                f"{MAX_FACE_UPSCALE}x). Re-extract with larger faces: `{REEXTRACT} --face-size {resize}` and train "
                f"with data.face_size={resize}; or run the backbone on smaller faces with "
                f"model.video.input_size={round(face_size * crop / resize)}")
        return problems

    @classmethod
    def cut(cls, cfg: VideoEncoderConfig, arrays: Mapping[str, np.ndarray], frames: Frames) -> dict[str, torch.Tensor]:
        if not frames.stored:
            return cls.absent(cfg, frames)
        faces, size = arrays["faces"], frames.data.face_size
        if faces.shape[1:] != (size, size, 3):
            raise StoreError(f"clip {frames.clip_id}: faces are {faces.shape[1:]}, data.face_size={size} expects "
                             f"({size}, {size}, 3); set data.face_size to the store's face size")
        # (T, S, S, 3) memory seen as (T, 3, S, S): a channels-last view, no copy
        video = torch.from_numpy(np.ascontiguousarray(faces[frames.index])).permute(0, 3, 1, 2)
        return {"video": video, "video_mask": frames.mask(arrays["face_mask"])}

    @classmethod
    def absent(cls, cfg: VideoEncoderConfig, frames: Frames) -> dict[str, torch.Tensor]:
        size = frames.data.face_size
        video = torch.zeros(frames.data.frames, size, size, 3, dtype=torch.uint8).permute(0, 3, 1, 2)
        return {"video": video, "video_mask": frames.none()}

    def __init__(self, cfg: VideoEncoderConfig):
        super().__init__(cfg)
        self.backbone = build_vision_backbone(cfg)
        self.spec: VisionSpec = self.backbone.spec
        self.output_dim = self.backbone.output_dim
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if cfg.normalise == "imagenet" else (self.spec.mean, self.spec.std)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)

    @property
    def pretrained(self) -> bool:
        return self.cfg.pretrained or bool(self.cfg.checkpoint)

    def load_pretrained(self, cfg: VideoEncoderConfig | None = None) -> None:
        self.backbone.load_pretrained(cfg or self.cfg)

    def preprocess(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) uint8 -> (B*T, 3, H, H) float, as the backbone's image processor would give it."""
        x = video.flatten(0, 1).float()  # (B*T, 3, S, S)
        resize, crop = face_geometry(self.spec, self.cfg, x.shape[-1])
        if resize != x.shape[-1]:  # width, then height, each pass rounded to 8 bits as PIL and torchvision do
            for size in ((x.shape[-2], resize), (resize, resize)):
                x = F.interpolate(x, size=size, mode=self.spec.interpolation, antialias=True, align_corners=False)
                x = x.clamp(0, 255).round()  # (B*T, 3, H', W')
        if crop < resize:
            top = (resize - crop) // 2
            x = x[..., top:top + crop, top:top + crop]  # (B*T, 3, crop, crop)
        if self.cfg.normalise == "per_image":
            return (x - x.mean((1, 2, 3), keepdim=True)) / (x.std((1, 2, 3), keepdim=True) + PER_IMAGE_EPS)
        return (x - self.mean) / self.std

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, S, S) uint8 faces -> (B, T, D) per-frame features."""
        b, t = video.shape[:2]
        x = self.preprocess(video)
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x).view(b, t, -1)  # (B*T, D) -> (B, T, D)

    def encode(self, batch) -> Tokens:
        return self(batch["video"]), batch["video_mask"], batch["frame_time"]
