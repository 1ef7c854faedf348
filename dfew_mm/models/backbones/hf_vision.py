"""Hugging Face vision transformers (`model.video.arch=hf/<repo id or local folder>`): CLIP and SigLIP
vision towers, DINOv2, ViT.

Built offline from the checkpoint's config (see hub.py for where it is found) with
`AutoModel.from_config`; for CLIP and SigLIP only the vision tower is built. A frame's embedding is
the model's pooled output: CLIP's post-layernorm CLS token, SigLIP's attention-pooling head,
DINOv2's layernormed CLS token. Preprocessing (resize, centre crop, mean, std, interpolation) is
read from the checkpoint's own image processor settings.
"""

from __future__ import annotations

import inspect
import logging

import torch
from torch import nn
from transformers import (AutoModel, BitImageProcessor, CLIPImageProcessor, CLIPVisionConfig, Dinov2Config,
                          SiglipImageProcessor, SiglipVisionConfig)

from dfew_mm.errors import AssetError, ConfigError
from dfew_mm.models.backbones import hub
from dfew_mm.models.backbones.base import (VisionBackbone, VisionSpec, attention_projections, load_state_strict,
                                           with_overrides)

log = logging.getLogger(__name__)
KEY = "model.video"
MODEL_TYPES = ("clip_vision_model", "siglip_vision_model", "dinov2", "vit")
RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL resampling codes used in processor configs
OPENAI_CLIP_MEAN, OPENAI_CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
_DINOV2 = dict(mlp_ratio=4, image_size=518, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-6,
               layerscale_value=1.0, use_swiglu_ffn=False, qkv_bias=True)
_DINOV2_PROCESSOR = dict(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
                         resample=3, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)

# The checkpoints named in docs/encoders.md, for building offline without their files: the architecture keys
# of each config.json (vision tower) and each preprocessor_config.json, as published on the hub.
PUBLISHED = {
    "openai/clip-vit-base-patch16": hub.Published(
        CLIPVisionConfig, dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                               image_size=224, patch_size=16, hidden_act="quick_gelu", layer_norm_eps=1e-5),
        CLIPImageProcessor, dict(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                 do_center_crop=True, resample=3, image_mean=OPENAI_CLIP_MEAN,
                                 image_std=OPENAI_CLIP_STD),
        "https://huggingface.co/openai/clip-vit-base-patch16"),
    "google/siglip-base-patch16-224": hub.Published(
        SiglipVisionConfig, dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                 num_attention_heads=12, image_size=224, patch_size=16,
                                 hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
        SiglipImageProcessor, dict(size={"height": 224, "width": 224}, resample=3, image_mean=[0.5, 0.5, 0.5],
                                   image_std=[0.5, 0.5, 0.5]),
        "https://huggingface.co/google/siglip-base-patch16-224"),
    "facebook/dinov2-small": hub.Published(
        Dinov2Config, dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, **_DINOV2),
        BitImageProcessor, _DINOV2_PROCESSOR, "https://huggingface.co/facebook/dinov2-small"),
    "facebook/dinov2-base": hub.Published(
        Dinov2Config, dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, **_DINOV2),
        BitImageProcessor, _DINOV2_PROCESSOR, "https://huggingface.co/facebook/dinov2-base"),
}


def _field(obj, name: str):
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def spec_from_processor(proc, source: str) -> VisionSpec:
    """A Hugging Face image processor's settings as a VisionSpec (square faces: one side suffices)."""
    if not getattr(proc, "do_resize", True):
        raise ConfigError(f"{source}: processors that do not resize are not supported")
    shortest, height, width = (_field(proc.size, k) for k in ("shortest_edge", "height", "width"))
    if shortest:
        resize = int(shortest)
    elif height and width and height == width:
        resize = int(height)
    else:
        raise ConfigError(f"{source}: resize to {dict(proc.size)} is not a square or shortest-edge resize")
    size = int(_field(proc.crop_size, "height")) if getattr(proc, "do_center_crop", False) else resize
    resample = int(getattr(proc.resample, "value", proc.resample))
    if resample not in RESAMPLE:
        raise ConfigError(f"{source}: resample={resample} is not one of {RESAMPLE} (bilinear, bicubic)")
    if getattr(proc, "do_rescale", True) and abs(proc.rescale_factor - 1 / 255) > 1e-9:
        raise ConfigError(f"{source}: rescale_factor={proc.rescale_factor}; 1/255 is expected")
    normalise = getattr(proc, "do_normalize", True)
    mean = tuple(float(v) for v in proc.image_mean) if normalise else (0.0, 0.0, 0.0)
    std = tuple(float(v) for v in proc.image_std) if normalise else (1.0, 1.0, 1.0)
    return VisionSpec(size=size, resize=resize, interpolation=RESAMPLE[resample], mean=mean, std=std, source=source)


class HFVisionBackbone(VisionBackbone):
    family = "hf"
    describe = ("hf/<Hugging Face repo id or local folder> (CLIP or SigLIP vision tower, DINOv2, ViT; "
                "transformers AutoModel)")
    examples = tuple(f"hf/{name}" for name in PUBLISHED)
    published = PUBLISHED

    def __init__(self, cfg):
        super().__init__(cfg.arch)
        config, self.config_source = hub.resolve_config(cfg.arch, cfg.checkpoint, PUBLISHED, KEY)
        config = getattr(config, "vision_config", config)  # CLIP / SigLIP: the vision tower only
        if config.model_type not in MODEL_TYPES:
            raise ConfigError(f"{KEY}.arch={cfg.arch} is a '{config.model_type}' model; the hf/ vision family "
                              f"supports {', '.join(MODEL_TYPES)}")
        config = with_overrides(config, cfg.arch_kwargs, KEY, cfg.arch)
        self.model = AutoModel.from_config(config)
        for name, p in self.model.named_parameters():
            if name.endswith("mask_token"):  # masked-image-modelling token (DINOv2, ViT): unused here, never trains
                p.requires_grad_(False)
        self.output_dim = config.hidden_size
        self.native_size = config.image_size
        self.spec = self.spec_for(cfg)
        self._interpolates = "interpolate_pos_encoding" in inspect.signature(self.model.forward).parameters
        self.lora_targets = attention_projections(self.model)
        self._overridden = set(cfg.arch_kwargs)

    @classmethod
    def matches(cls, arch: str) -> bool:
        return arch.startswith(hub.HF_PREFIX) and len(arch) > len(hub.HF_PREFIX)

    @classmethod
    def spec_for(cls, cfg) -> VisionSpec:
        proc, source = hub.resolve_processor(cfg.arch, cfg.checkpoint, PUBLISHED, KEY, "image")
        return spec_from_processor(proc, source)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = {"interpolate_pos_encoding": True} if self._interpolates and x.shape[-1] != self.native_size else {}
        out = self.model(pixel_values=x, **extra)
        if out.pooler_output is not None:
            return out.pooler_output  # (N, D)
        return out.last_hidden_state.mean(1)  # (N, L, D) -> (N, D) for towers without a pooling head

    def blocks(self) -> list[nn.Module]:
        encoder = self.model.encoder
        return list(getattr(encoder, "layers", None) or getattr(encoder, "layer"))

    def load_pretrained(self, cfg) -> None:
        """The checkpoint's weights (hub id, cache or local folder); strict keys, offline advice on failure."""
        if not (cfg.checkpoint or cfg.pretrained):
            return
        source_model, source = hub.load_hf_model(self.arch, cfg.checkpoint, KEY)
        tower = getattr(source_model, "vision_model", source_model)
        hub.check_published_config(self.model.config, tower.config, self.arch, PUBLISHED, self._overridden)
        proc = hub.fetch_processor(source, "image")
        if proc is not None:
            theirs = spec_from_processor(proc, f"{source} (preprocessor_config.json)")
            if theirs.settings() != self.spec.settings():
                raise AssetError(f"{self.arch}: the model was built with preprocessing {self.spec} but the weights' "
                                 f"processor says {theirs}; the cache now holds the weights' settings: run again")
        load_state_strict(self.model, tower.state_dict(), source, f"{self.arch} ({KEY}.arch, arch_kwargs)")
        log.info("video backbone %s: loaded %s", self.arch, source)
