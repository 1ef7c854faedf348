"""Face video: a vision backbone (`model.video.arch`, see dfew_mm.models.backbones) on every face crop.

Store: `faces` (T, S, S, 3) uint8 crops and `face_mask` (T,). Preprocessing happens here, on
device, from the backbone's own settings (`backbone.spec`): resize the uint8 faces so that their
side is the backbone's resize size (bilinear or bicubic, antialiased, rounded to whole grey levels
as an 8-bit image processor does), centre-crop to its input size, normalise with its mean and std.
`model.video.input_size` runs the backbone at another size (the same crop ratio),
`model.video.crop_pct` changes the crop ratio, and `model.video.normalise` picks per-image
standardisation or ImageNet statistics instead.

Training-time augmentation (`data.augment`, settings `model.video.aug`): a random resized crop, the
clip's horizontal flip, a small rotation and colour jitter, with one set of parameters for all frames of
a clip (the expression must not jump between frames), different per clip. The loader draws the
parameters (`augment`, from the sample's generator) into `video_aug`; the encoder applies them to the
whole batch on the device, after the backbone's resize and centre crop and before normalisation: crop,
flip and rotation as one affine resampling (torch's affine_grid/grid_sample), then brightness, contrast
and saturation blended as torchvision's ColorJitter does. Applying them per clip in the loader workers
(torchvision.transforms.v2 on the 112 px uint8 crops) cut the DataLoader to 0.2x its floor on 2 cores
(docs/augmentation.md). Optional crop-level low light (dfew_mm.lowlight) darkens the uint8 crops in the
loader. Batches without `video_aug` (evaluation, predict, embed, member weighting) are never augmented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from dfew_mm.constants import LUMA_WEIGHTS
from dfew_mm.errors import ConfigError, StoreError
from dfew_mm.lowlight import darken
from dfew_mm.models.backbones import VisionSpec, build_vision_backbone, vision_family, vision_spec
from dfew_mm.models.backbones.resnet import IMAGENET_MEAN, IMAGENET_STD
from dfew_mm.models.encoders.base import (REEXTRACT, Augmentation, BackboneConfig, Encoder, Frames, Tokens,
                                          check_tuning)

PER_IMAGE_EPS = 1.0  # grey levels; keeps a blank (all-zero, masked) crop finite
NORMALISE = ("backbone", "imagenet", "per_image")
MAX_FACE_UPSCALE = 1.5  # resize side / stored face side; 112 px faces serve backbones resizing to <= 168 px
CROP_ASPECT = (4 / 5, 5 / 4)  # width / height of the random resized crop, drawn log-uniformly
# `video_aug` (B, 9) per clip: the crop window's centre and half size in normalised image coordinates
# (-1..1, as affine_grid's), the mirror sign (-1 flips), the rotation (radians) and the colour factors
AUG_PARAMS = ("centre_x", "centre_y", "half_w", "half_h", "mirror", "angle", "brightness", "contrast", "saturation")
LOWLIGHT_STEP = 0.1  # low-light strengths are drawn in these steps (dfew_mm.lowlight caches a table per strength)


@dataclass
class FaceAugmentConfig:
    """`model.video.aug`: training-time augmentation of a clip's faces, one draw per clip (`data.augment`)."""

    crop: float = 0.8  # random resized crop: the smallest share of the face crop's area kept (1: no crop)
    rotate: float = 10.0  # degrees: rotation drawn in [-rotate, rotate]
    brightness: float = 0.3  # colour jitter: factors drawn in [1 - x, 1 + x] (0: off)
    contrast: float = 0.3
    saturation: float = 0.3
    # Crop-level low light: the chance of darkening a clip's faces at a strength drawn in
    # [0, lowlight_strength] (dfew_mm.lowlight). It changes what the low-light analysis measures (a model
    # that saw dark faces in training): off by default, and recorded in the run's config like every setting.
    lowlight: float = 0.0
    lowlight_strength: float = 0.8


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
    aug: FaceAugmentConfig = field(default_factory=FaceAugmentConfig)


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


def crop_window(min_area: float, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """A random resized crop's window as (centre x, centre y, half width, half height) in normalised image
    coordinates: area share drawn in [min_area, 1], aspect ratio in CROP_ASPECT, position uniform, as
    torchvision's RandomResizedCrop draws them (from `rng`, in fractions of the side instead of pixels)."""
    log_ratio = (math.log(CROP_ASPECT[0]), math.log(CROP_ASPECT[1]))
    for _ in range(10):
        area, ratio = rng.uniform(min_area, 1.0), math.exp(rng.uniform(*log_ratio))
        w, h = math.sqrt(area * ratio), math.sqrt(area / ratio)  # shares of the side
        if w <= 1 and h <= 1:
            left, top = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
            return 2 * left + w - 1, 2 * top + h - 1, w, h
    return 0.0, 0.0, 1.0, 1.0


def augment_faces(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) float faces in 0..255 and (N, 9) `video_aug` rows -> augmented (N, 3, H, W).

    One affine resampling per image takes the crop window, mirrored and rotated, to the full output
    (outside the image: black, as torchvision's rotation fills); then ColorJitter's blends: brightness
    scales, contrast blends with the image's mean grey, saturation with its own greyscale.
    """
    cx, cy, half_w, half_h, mirror, angle, brightness, contrast, saturation = params.float().unbind(1)  # AUG_PARAMS
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos * half_w * mirror, -sin * half_h, cx], 1),
                         torch.stack([sin * half_w * mirror, cos * half_h, cy], 1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (N, H, W, 2) input coordinates
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    luma = x.new_tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)
    x = (x * brightness.view(-1, 1, 1, 1)).clamp(0, 255)
    mean = (x * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)  # (N, 1, 1, 1)
    x = (mean + contrast.view(-1, 1, 1, 1) * (x - mean)).clamp(0, 255)
    grey = (x * luma).sum(1, keepdim=True)  # (N, 1, H, W)
    return (grey + saturation.view(-1, 1, 1, 1) * (x - grey)).clamp(0, 255)


class VideoEncoder(Encoder):
    """Sample: video (T, 3, S, S) uint8 RGB face crops (a channels-last view of the stored (T, S, S, 3)),
    video_mask (T,) bool, a face was found in that frame; training samples with `data.augment` also carry
    video_aug (9,) float32, the clip's augmentation (AUG_PARAMS). Tokens: (B, T, D) per-frame features."""

    name = "video"
    Config = VideoEncoderConfig
    cacheable = True
    ranges = {"input_size": (0, 1024, False), "aug.crop": (0.0, 1.0, True), "aug.rotate": (0.0, 180.0, False),
              "aug.brightness": (0.0, 1.0, False), "aug.contrast": (0.0, 1.0, False),
              "aug.saturation": (0.0, 1.0, False), "aug.lowlight": (0.0, 1.0, False),
              "aug.lowlight_strength": (0.0, 1.0, False)}

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

    @classmethod
    def augment(cls, cfg: VideoEncoderConfig, part: dict, aug: Augmentation) -> dict:
        """Draw the clip's crop window, rotation and colour factors (applied on the device, see `augment_faces`)
        into `video_aug` (9,); darken the uint8 crops here when low light is drawn."""
        a, rng = cfg.aug, aug.rng
        window = crop_window(a.crop, rng) if a.crop < 1 else (0.0, 0.0, 1.0, 1.0)
        angle = math.radians(rng.uniform(-a.rotate, a.rotate)) if a.rotate else 0.0
        colour = [rng.uniform(1 - x, 1 + x) if x else 1.0 for x in (a.brightness, a.contrast, a.saturation)]
        params = torch.tensor([*window, -1.0 if aug.flip else 1.0, angle, *colour], dtype=torch.float32)
        video = part["video"]  # (T, 3, S, S) uint8, channels-last over (T, S, S, 3)
        if a.lowlight and rng.random() < a.lowlight:
            steps = int(rng.integers(0, round(a.lowlight_strength / LOWLIGHT_STEP) + 1))
            if steps:
                faces = darken(video.permute(0, 2, 3, 1).numpy(), steps * LOWLIGHT_STEP, rng)  # (T, S, S, 3) copy
                video = torch.from_numpy(faces).permute(0, 3, 1, 2)
        return {**part, "video": video, "video_aug": params}

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

    def preprocess(self, video: torch.Tensor, aug: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, 3, S, S) uint8 -> (B*T, 3, H, H) float, as the backbone's image processor would give it;
        with `aug` (B, 9) each clip's augmentation is applied before normalising."""
        x = video.flatten(0, 1).float()  # (B*T, 3, S, S)
        resize, crop = face_geometry(self.spec, self.cfg, x.shape[-1])
        if resize != x.shape[-1]:  # width, then height, each pass rounded to 8 bits as PIL and torchvision do
            for size in ((x.shape[-2], resize), (resize, resize)):
                x = F.interpolate(x, size=size, mode=self.spec.interpolation, antialias=True, align_corners=False)
                x = x.clamp(0, 255).round()  # (B*T, 3, H', W')
        if crop < resize:
            top = (resize - crop) // 2
            x = x[..., top:top + crop, top:top + crop]  # (B*T, 3, crop, crop)
        if aug is not None:
            x = augment_faces(x, aug.repeat_interleave(video.shape[1], 0))  # one row per clip -> per frame
        if self.cfg.normalise == "per_image":
            return (x - x.mean((1, 2, 3), keepdim=True)) / (x.std((1, 2, 3), keepdim=True) + PER_IMAGE_EPS)
        return (x - self.mean) / self.std

    def forward(self, video: torch.Tensor, aug: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, 3, S, S) uint8 faces (and their (B, 9) augmentation) -> (B, T, D) per-frame features."""
        b, t = video.shape[:2]
        x = self.preprocess(video, aug)
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x).view(b, t, -1)  # (B*T, D) -> (B, T, D)

    def encode(self, batch) -> Tokens:
        aug = batch.get("video_aug") if self.training else None  # only training batches carry it
        return self(batch["video"], aug), batch["video_mask"], batch["frame_time"]
