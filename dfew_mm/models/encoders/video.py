"""Face video encoder: a torchvision ResNet applied to every face crop of a clip."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dfew_mm.config import VideoEncoderConfig
from dfew_mm.errors import AssetError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PER_IMAGE_EPS = 1.0  # grey levels; keeps a blank (all-zero, masked) crop finite
FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
WEIGHTS = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights", "resnet50": "ResNet50_Weights"}


class VideoEncoder(nn.Module):
    """(B, T, 3, S, S) uint8 faces -> (B, T, D) per-frame features; normalisation happens here, on device."""

    def __init__(self, cfg: VideoEncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = getattr(torchvision.models, cfg.arch)(weights=None)
        self.backbone.fc = nn.Identity()
        self.output_dim = FEATURE_DIMS[cfg.arch]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)
        self.apply_freeze()

    @property
    def pretrained(self) -> bool:
        return self.cfg.pretrained or bool(self.cfg.checkpoint)

    def frozen_modules(self) -> list[nn.Module]:
        if self.cfg.freeze == "all":
            return [self.backbone]
        if self.cfg.freeze == "all_but_last":
            return [m for name, m in self.backbone.named_children() if name not in ("layer4", "fc")]
        return []

    def apply_freeze(self) -> None:
        for module in self.frozen_modules():
            module.requires_grad_(False)

    def train(self, mode: bool = True) -> "VideoEncoder":
        super().train(mode)
        for module in self.frozen_modules():  # frozen BatchNorm keeps its running statistics
            module.eval()
        return self

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b, t = video.shape[:2]
        x = video.flatten(0, 1).float()  # (B*T, 3, S, S)
        if self.cfg.input_size and self.cfg.input_size != x.shape[-1]:
            x = F.interpolate(x, size=(self.cfg.input_size, self.cfg.input_size), mode="bilinear",
                              antialias=True, align_corners=False)
        if self.cfg.normalise == "per_image":
            x = (x - x.mean((1, 2, 3), keepdim=True)) / (x.std((1, 2, 3), keepdim=True) + PER_IMAGE_EPS)
        else:
            x = (x - self.mean) / self.std
        if x.is_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x).view(b, t, -1)  # (B, T, D)


def build_video_encoder(cfg: VideoEncoderConfig) -> VideoEncoder:
    return VideoEncoder(cfg)


def _download_imagenet(arch: str) -> dict[str, torch.Tensor]:
    weights = getattr(torchvision.models, WEIGHTS[arch]).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False)
    except Exception as err:  # URLError, HTTPError, OSError, hash mismatch: all mean "no weights"
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        raise AssetError(
            f"could not download ImageNet weights for {arch} from {weights.url} ({err}). Offline: copy that "
            f"file into {hub}/ (or set TORCH_HOME), or point model.video.checkpoint at a local state dict, "
            "or set model.video.pretrained=false to train from scratch."
        ) from err


def load_video_weights(encoder: VideoEncoder, cfg: VideoEncoderConfig) -> None:
    """ImageNet weights, or a face-pretrained state dict from `cfg.checkpoint` (which wins)."""
    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
        if not path.is_file():
            raise AssetError(f"model.video.checkpoint {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        source = str(path)
    elif cfg.pretrained:
        state, source = _download_imagenet(cfg.arch), f"torchvision {WEIGHTS[cfg.arch]}.IMAGENET1K_V1"
    else:
        return
    # Checkpoints come from classifiers: drop their head and a DataParallel 'module.' prefix.
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        encoder.backbone.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise AssetError(f"{source} does not fit a torchvision {cfg.arch} (model.video.arch): {err}") from err
    log.info("video encoder: loaded %s", source)
