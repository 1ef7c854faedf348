"""Face video encoder: a vision backbone (`model.video.arch`, see dfew_mm.models.backbones) on every face crop.

Preprocessing happens here, on device, from the backbone's own settings (`backbone.spec`):
resize the uint8 faces so that their side is the backbone's resize size (bilinear or bicubic,
antialiased, rounded to whole grey levels as an 8-bit image processor does), centre-crop to its
input size, normalise with its mean and std. `model.video.input_size` runs the backbone at
another size (the same crop ratio), `model.video.crop_pct` changes the crop ratio, and
`model.video.normalise` picks per-image standardisation or ImageNet statistics instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfew_mm.batch import Batch
from dfew_mm.config import VideoEncoderConfig
from dfew_mm.models.backbones import VisionSpec, build_vision_backbone
from dfew_mm.models.backbones.base import frozen_modules
from dfew_mm.models.backbones.resnet import IMAGENET_MEAN, IMAGENET_STD

PER_IMAGE_EPS = 1.0  # grey levels; keeps a blank (all-zero, masked) crop finite


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


class VideoEncoder(nn.Module):
    """(B, T, 3, S, S) uint8 faces -> (B, T, D) per-frame features."""

    input_keys = ("video",)

    def __init__(self, cfg: VideoEncoderConfig):
        super().__init__()
        self.cfg = cfg
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

    def train(self, mode: bool = True) -> "VideoEncoder":
        super().train(mode)
        if mode:
            for module in frozen_modules(self.backbone):  # frozen BatchNorm keeps its running statistics
                module.eval()
        return self

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
        b, t = video.shape[:2]
        x = self.preprocess(video)
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x).view(b, t, -1)  # (B*T, D) -> (B, T, D)

    def tokens(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features (B, T, D), mask (B, T), timestamps (B, T) seconds; cached embeddings when the batch has them."""
        features = batch["video_emb"] if "video_emb" in batch else self(batch["video"])
        return features, batch["video_mask"], batch["frame_time"]


def build_video_encoder(cfg: VideoEncoderConfig) -> VideoEncoder:
    return VideoEncoder(cfg)


def load_video_weights(encoder: VideoEncoder, cfg: VideoEncoderConfig) -> None:
    """Pretrained weights as `model.video` asks (the registry's loading step)."""
    encoder.load_pretrained(cfg)
