"""torchvision ResNet-18/34/50 (`model.video.arch=resnet18|resnet34|resnet50`), ImageNet weights.

The backbone *is* a torchvision ResNet (a subclass, classifier replaced by Identity), so its
state-dict keys are torchvision's: `encoders.video.backbone.conv1.weight`, ... exactly as in
checkpoints written before the backbone registry. Fully convolutional: it takes faces at any
size (as stored unless `model.video.input_size` says otherwise).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from dfew_mm.errors import AssetError, ConfigError
from dfew_mm.models.backbones.base import VisionBackbone, VisionSpec, load_state_strict, read_state_file

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHS = {  # name -> (block, blocks per stage, torchvision weights enum)
    "resnet18": (BasicBlock, [2, 2, 2, 2], "ResNet18_Weights"),
    "resnet34": (BasicBlock, [3, 4, 6, 3], "ResNet34_Weights"),
    "resnet50": (Bottleneck, [3, 4, 6, 3], "ResNet50_Weights"),
}


class ResNetBackbone(VisionBackbone, ResNet):
    family = "resnet"
    describe = "resnet18, resnet34, resnet50 (torchvision, ImageNet weights)"
    examples = ("resnet18",)

    def __init__(self, cfg):
        if cfg.arch_kwargs:
            raise ConfigError(f"model.video.arch_kwargs {dict(cfg.arch_kwargs)} apply to timm/ and hf/ backbones, "
                              f"not to the torchvision {cfg.arch}")
        block, layers, _ = ARCHS[cfg.arch]
        ResNet.__init__(self, block, layers)  # torchvision's own layout and initialisation
        self.arch = cfg.arch
        self.fc = nn.Identity()
        self.output_dim = 512 * block.expansion
        self.spec = self.spec_for(cfg)

    @classmethod
    def matches(cls, arch: str) -> bool:
        return arch in ARCHS

    @classmethod
    def spec_for(cls, cfg) -> VisionSpec:
        return VisionSpec(size=None, resize=None, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                          source=f"torchvision {ARCHS[cfg.arch][2]}.IMAGENET1K_V1 (ImageNet mean/std, any size)")

    def blocks(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]  # the four stages

    def load_pretrained(self, cfg) -> None:
        """ImageNet weights, or a face-pretrained state dict from `cfg.checkpoint` (which wins)."""
        if cfg.checkpoint:
            state, source = read_state_file(cfg.checkpoint, "model.video.checkpoint"), str(cfg.checkpoint)
        elif cfg.pretrained:
            state, source = self._download(), f"torchvision {ARCHS[self.arch][2]}.IMAGENET1K_V1"
        else:
            return
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the classifier's head
        load_state_strict(self, state, source, f"a torchvision {self.arch} (model.video.arch)")
        log.info("video backbone %s: loaded %s", self.arch, source)

    def _download(self) -> dict[str, torch.Tensor]:
        weights = getattr(torchvision.models, ARCHS[self.arch][2]).IMAGENET1K_V1
        try:
            return weights.get_state_dict(progress=False)
        except Exception as err:  # URLError, HTTPError, OSError, hash mismatch: all mean "no weights"
            hub = Path(torch.hub.get_dir()) / "checkpoints"
            raise AssetError(
                f"could not download ImageNet weights for {self.arch} from {weights.url} ({err}). Offline: copy "
                f"that file into {hub}/ (or set TORCH_HOME), or point model.video.checkpoint at a local state "
                "dict, or set model.video.pretrained=false to train from scratch."
            ) from err
