"""The modality protocol: all that dfew_mm knows about one modality is one `Encoder` subclass.

A modality is one file of this folder holding one `Encoder` subclass, plus its line in the
registry (`__init__.py`). The class says, for its name (`model.modalities`, `--modalities`):

    config    Config          the dataclass of its `model.<name>` section (YAML keys, defaults)
              ranges          numeric bounds of that section, checked when a config is loaded
              check_config    the other checks (backbone names, tuning choices), before any data is read
    store     store_arrays    the per-clip store arrays its samples read, for its config
              extract_option  the extraction switch that writes them when a default extraction does not
              store_problems  what a store lacks for its config, with what to re-extract
    sample    cut             its sample tensors from a clip's stored arrays at the sampled frames
              absent          the same keys as zeros with all-false masks (modality not asked for)
              augment         training-time augmentation of its cut tensors from the sample's draws
                              (`Augmentation`: one flip shared by every modality, one generator per
                              (seed, epoch, clip)); never called in evaluation, predict, embed or weighting
    model     output_dim      feature size of its tokens
              load_pretrained the separate weight-loading step (strict keys, offline advice on failure)
              tokens(batch)   (features (B, L, D), mask (B, L), times (B, L) seconds), read from the
                              embedding cache when the batch carries it, else `encode(batch)`
    cache     cacheable       `dfew_mm embed` may store its tokens when its backbone is frozen (`freeze: all`)

Data-side members are classmethods: reading a store never builds a network. Freezing is shared:
backbone encoders take the `BackboneConfig` fields and `apply_tuning` (dfew_mm.models.backbones),
and every encoder runs its frozen submodules in eval mode while training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from torch import nn

from dfew_mm.errors import ConfigError
from dfew_mm.models.backbones.base import FREEZE_POLICIES, frozen_modules

Tokens = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # features (B, L, D), mask (B, L) bool, times (B, L) s
CACHE_SUFFIXES = ("_emb", "_emb_mask", "_emb_time")  # batch keys of cached tokens: <name>_emb, ...
REEXTRACT = "python preprocess/extract.py --dfew-root ROOT --out NEW_FEATURES"


@dataclass
class BackboneConfig:
    """The `model.<name>` fields of every encoder built on a named pretrained backbone."""

    arch: str = ""  # the backbone by name (dfew_mm.models.backbones lists the families)
    pretrained: bool = True  # the backbone's published weights
    checkpoint: str = ""  # local weights instead: a state dict or a Hugging Face folder
    arch_kwargs: dict[str, Any] = field(default_factory=dict)  # timm.create_model kwargs / Hugging Face config keys
    # none | all | last_blocks (the last trainable_blocks train) | lora (adapters only); all_but_last = 1 last block
    freeze: str = "none"
    trainable_blocks: int = 1  # last_blocks: ResNet stages or transformer layers that train, counted from the top
    lora_rank: int = 8
    lora_alpha: float = 16.0  # adapter scale = lora_alpha / lora_rank
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=list)  # module names; empty: the backbone's attention projections


def check_tuning(cfg: BackboneConfig, key: str) -> None:
    """The freezing and LoRA choices of a backbone section (`key` = model.<name>)."""
    if cfg.freeze not in FREEZE_POLICIES:
        raise ConfigError(f"{key}.freeze={cfg.freeze!r} is not one of {', '.join(FREEZE_POLICIES)}")
    if cfg.trainable_blocks < 1:
        raise ConfigError(f"{key}.trainable_blocks={cfg.trainable_blocks} must be at least 1")
    if cfg.lora_rank < 1:
        raise ConfigError(f"{key}.lora_rank={cfg.lora_rank} must be at least 1")
    if not 0.0 <= cfg.lora_dropout < 1.0:
        raise ConfigError(f"{key}.lora_dropout={cfg.lora_dropout} must be in [0, 1)")


@dataclass(frozen=True)
class Frames:
    """The frames one sample takes from a clip file, shared by every modality of the sample. T = data.frames."""

    index: np.ndarray | slice  # (T,) stored frame indices; slice(None) when they are all stored frames in order
    present: np.ndarray  # (T,) bool, false for a clip file without frames
    stored: int  # frames in the clip file
    data: Any  # the `data` config section (dfew_mm.config.DataConfig): frames, face_size, audio_frames
    rng: np.random.Generator | None  # training draws (e.g. the audio crop); None: the deterministic sample
    clip_id: str

    def mask(self, valid: np.ndarray) -> torch.Tensor:
        """(T,) bool from a stored per-frame validity array (T_stored,)."""
        return torch.from_numpy(valid[self.index] & self.present)

    def none(self) -> torch.Tensor:
        return torch.zeros(self.data.frames, dtype=torch.bool)  # (T,) all false


@dataclass(frozen=True)
class Augmentation:
    """One training sample's augmentation draws for one modality.

    `flip`: mirror the clip horizontally, drawn once per clip and shared by all its modalities (faces,
    and with them pose and blendshapes, so the modalities stay consistent). `rng`: the modality's own
    generator, seeded by (seed, epoch, clip index, modality) on a stream apart from the frame sampler's,
    so frame sampling is the same with augmentation on or off, one modality's draws do not depend on
    which others are read or augmented, and a resumed run draws what the uninterrupted one drew.
    """

    flip: bool
    rng: np.random.Generator


class Encoder(nn.Module):
    """Base of every modality encoder; see the module docstring for the protocol."""

    name: ClassVar[str]
    Config: ClassVar[type]
    default: ClassVar[bool] = True  # in `model.modalities` unless a config says otherwise
    # the ExtractOptions switch (preprocess/extract.py --<switch>) that writes its arrays; "": every extraction does
    extract_option: ClassVar[str] = ""
    cacheable: ClassVar[bool] = False
    ranges: ClassVar[Mapping[str, tuple[float, float, bool]]] = {}  # field -> (lowest, highest, lowest excluded?)
    output_dim: int

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg

    # -- config and store ---------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg, data=None) -> None:
        """ConfigError for settings that types and ranges cannot express (no files are read); the checks
        against the `data` section run when it is given (a config being loaded)."""

    @classmethod
    def store_arrays(cls, cfg) -> tuple[str, ...]:
        raise NotImplementedError

    @classmethod
    def store_problems(cls, cfg, face_size: int, arrays) -> list[str]:
        """What a store holding `arrays` (faces of `face_size` px) lacks for this encoder, and the fix."""
        missing = [a for a in cls.store_arrays(cfg) if a not in arrays]
        if not missing:
            return []
        fix = f"Re-extract with `{REEXTRACT}{' ' + extract_flag(cls.extract_option) if cls.extract_option else ''}`"
        return [f"the {cls.name} modality reads the store's {', '.join(repr(a) for a in missing)} array"
                f"{'s' if len(missing) > 1 else ''}, which this store lacks. {fix}"]

    # -- samples ----------------------------------------------------------------------------------
    @classmethod
    def cut(cls, cfg, arrays: Mapping[str, np.ndarray], frames: Frames) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def absent(cls, cfg, frames: Frames) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def augment(cls, cfg, part: dict[str, Any], aug: Augmentation) -> dict[str, Any]:
        """`part` (what `cut` returned) augmented for training; the same keys, shapes and dtypes."""
        return part

    # -- model ------------------------------------------------------------------------------------
    @property
    def pretrained(self) -> bool:
        """Starts from pretrained weights (trained at train.backbone_lr_scale)."""
        return False

    def load_pretrained(self, cfg=None) -> None:
        """Load the pretrained weights the config asks for; encoders trained from scratch have none."""

    def encode(self, batch: Mapping[str, Any]) -> Tokens:
        raise NotImplementedError

    def tokens(self, batch: Mapping[str, Any]) -> Tokens:
        """Features (B, L, D), mask (B, L), timestamps (B, L) seconds; the cached ones when the batch has them."""
        cached = [self.name + suffix for suffix in CACHE_SUFFIXES]
        if cached[0] in batch:
            return batch[cached[0]], batch[cached[1]], batch[cached[2]]
        return self.encode(batch)

    def train(self, mode: bool = True) -> "Encoder":
        super().train(mode)
        if mode:
            for module in frozen_modules(self):  # frozen BatchNorm keeps its statistics, no dropout
                module.eval()
        return self


def mirror_order(names: tuple[str, ...], left: str, right: str) -> list[int]:
    """The index order that mirrors named left/right channels: position i takes the channel whose name is
    names[i] with `left` and `right` swapped (e.g. mouthSmileLeft <-> mouthSmileRight); others stay."""
    swapped = [n.replace(left, "\0").replace(right, left).replace("\0", right) for n in names]
    return [names.index(n) for n in swapped]


def extract_flag(option: str) -> str:
    """The extraction command-line flag of an ExtractOptions switch: blendshapes -> --blendshapes."""
    return "--" + option.replace("_", "-")


MLP_RANGES = {"hidden": (1, 1 << 16, False), "layers": (1, 64, False), "dropout": (0.0, 1.0, False)}


def per_frame_mlp(width: int, cfg) -> tuple[nn.Sequential, int]:
    """LayerNorm, then `cfg.layers` x (Linear to cfg.hidden, GELU, Dropout): (the MLP, its output width)."""
    layers: list[nn.Module] = [nn.LayerNorm(width)]
    for _ in range(cfg.layers):
        layers += [nn.Linear(width, cfg.hidden), nn.GELU(), nn.Dropout(cfg.dropout)]
        width = cfg.hidden
    return nn.Sequential(*layers), width
