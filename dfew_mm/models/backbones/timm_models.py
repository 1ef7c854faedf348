"""Any timm image model by name (`model.video.arch=timm/<name>`), e.g. face-pretrained HSEmotion weights.

Built with `timm.create_model(name, pretrained=False, num_classes=0, **arch_kwargs)`: a pooled
embedding per image, no classifier. Preprocessing comes from timm's own data config for that
model (input size, interpolation, crop_pct, mean, std). Weights load in a separate step: timm's
published ones (`pretrained: true`, from the Hugging Face hub) or a local state dict
(`model.video.checkpoint=FILE`, e.g. an HSEmotion EfficientNet converted to a state dict),
whose classifier keys are dropped.
"""

from __future__ import annotations

import logging
import math

import timm
from timm.data import resolve_data_config
from torch import nn

from dfew_mm.errors import AssetError, ConfigError
from dfew_mm.models.backbones.base import VisionBackbone, VisionSpec, load_state_strict, read_state_file

log = logging.getLogger(__name__)
PREFIX = "timm/"
BLOCK_ATTRS = ("blocks", "stages", "layers")  # where timm models keep their repeated blocks


def timm_name(arch: str) -> str:
    return arch[len(PREFIX):]


class TimmBackbone(VisionBackbone):
    family = "timm"
    describe = "timm/<model name> (any timm model; a local state dict via model.video.checkpoint)"
    examples = ("timm/tf_efficientnet_b0.ns_jft_in1k", "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k")

    def __init__(self, cfg):
        super().__init__(cfg.arch)
        name = timm_name(cfg.arch)
        self.spec = self.spec_for(cfg)
        kwargs = self.model_kwargs(cfg, self.spec)
        try:
            self.model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        except TypeError as err:  # an arch_kwargs name the model does not take
            raise ConfigError(f"model.video.arch_kwargs {kwargs} do not fit timm model {name}: {err}") from err
        self.output_dim = getattr(self.model, "head_hidden_size", None) or self.model.num_features  # pooled width
        self.classifier_name = self.model.pretrained_cfg.get("classifier") or "head"  # dropped from checkpoints
        self.lora_targets = ("qkv",) if any(n.endswith("qkv") for n, _ in self.model.named_modules()) else ()
        self._kwargs = kwargs

    @classmethod
    def matches(cls, arch: str) -> bool:
        return arch.startswith(PREFIX) and len(arch) > len(PREFIX)

    @staticmethod
    def check_name(arch: str) -> str:
        name = timm_name(arch)
        if not timm.is_model(name):
            raise ConfigError(f"model.video.arch={arch}: timm has no model '{name}' (list them with "
                              "python -c \"import timm; print(timm.list_models('*efficientnet*'))\")")
        return name

    @classmethod
    def spec_for(cls, cfg) -> VisionSpec:
        name = cls.check_name(cfg.arch)
        pretrained_cfg = timm.models.get_pretrained_cfg(name)
        data = resolve_data_config(pretrained_cfg=pretrained_cfg.to_dict() if pretrained_cfg else {})
        size = int(cfg.arch_kwargs.get("img_size", data["input_size"][-1]))
        crop_pct = data.get("crop_pct") or 1.0
        if data.get("crop_mode", "center") != "center":
            raise ConfigError(f"timm/{name} uses crop_mode={data['crop_mode']!r}; only centre crops are supported")
        return VisionSpec(size=size, resize=math.floor(size / crop_pct), interpolation=data["interpolation"],
                          mean=tuple(data["mean"]), std=tuple(data["std"]), source=f"timm data config of {name}")

    @staticmethod
    def model_kwargs(cfg, spec: VisionSpec) -> dict:
        """arch_kwargs, plus img_size for fixed-size models (ViTs) run at another model.video.input_size."""
        kwargs = dict(cfg.arch_kwargs)
        pretrained_cfg = timm.models.get_pretrained_cfg(timm_name(cfg.arch))
        fixed = bool(pretrained_cfg and pretrained_cfg.fixed_input_size)
        if fixed and cfg.input_size and cfg.input_size != spec.size:
            kwargs.setdefault("img_size", cfg.input_size)
        return kwargs

    def forward(self, x):
        return self.model(x)  # (N, D) pooled features (num_classes=0)

    def blocks(self) -> list[nn.Module]:
        for attr in BLOCK_ATTRS:
            found = getattr(self.model, attr, None)
            if isinstance(found, (nn.Sequential, nn.ModuleList)) and len(found):
                return list(found)
        stages = [getattr(self.model, f"layer{i}", None) for i in range(1, 5)]  # ResNet-style
        if all(isinstance(s, nn.Module) for s in stages):
            return stages
        raise ConfigError(f"cannot find the blocks of {self.arch} for model.video.freeze=last_blocks; "
                          "use none, all or lora")

    def load_pretrained(self, cfg) -> None:
        """timm's published weights, or a local state dict in `cfg.checkpoint` (which wins)."""
        name = timm_name(self.arch)
        if cfg.checkpoint:
            state = read_state_file(cfg.checkpoint, "model.video.checkpoint")
            state = {k: v for k, v in state.items() if not k.startswith(self.classifier_name + ".")}
            source = str(cfg.checkpoint)
        elif cfg.pretrained:
            try:
                state = timm.create_model(name, pretrained=True, num_classes=0, **self._kwargs).state_dict()
            except Exception as err:  # offline, missing files, hash errors: all mean "no weights"
                published = timm.models.get_pretrained_cfg(name)
                hub_id = (published.hf_hub_id if published else None) or name
                raise AssetError(
                    f"could not load timm weights for {name} ({type(err).__name__}: {err}). Offline: on a machine "
                    f"with internet run `huggingface-cli download {hub_id} --local-dir DIR`, copy DIR here and set "
                    "model.video.checkpoint=DIR (it reads DIR/model.safetensors); or fill the Hugging Face cache "
                    "(HF_HOME) and set HF_HUB_OFFLINE=1; or set model.video.pretrained=false.") from err
            source = f"timm {name}"
        else:
            return
        load_state_strict(self.model, state, source, f"timm {name} (model.video.arch, arch_kwargs)")
        log.info("video backbone %s: loaded %s", self.arch, source)
