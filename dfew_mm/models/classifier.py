"""EmotionModel: the encoders of the chosen modalities, temporal fusion and a head over the dataset's classes."""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
from torch import nn

from dfew_mm.batch import Batch
from dfew_mm.datasets import default_classes
from dfew_mm.errors import ConfigError
from dfew_mm.models.encoders import ENCODERS, resolve_modalities
from dfew_mm.models.fusion import (FUSION_MODES, MEMBER_WEIGHTS, TemporalFusion, UnimodalHead, build_head,
                                   mix_probabilities)


FUSION_MEMBER = "fusion"  # the temporal transformer's head, beside one unimodal head per modality


class Outputs(NamedTuple):
    """What training and member weighting need beyond the prediction: every member's own logits."""

    logits: torch.Tensor  # (B, C) the prediction, as `model(batch)` returns it
    members: dict[str, torch.Tensor]  # "fusion" and/or modality names -> (B, C) logits of that head
    present: dict[str, torch.Tensor]  # same keys -> (B,) bool: the member has input for the clip


class EmotionModel(nn.Module):
    """`model(batch, modalities=None) -> (B, C)` logits; `model(batch, return_unimodal=True) -> Outputs`.

    `modalities` may be any subset of the trained ones; the others are masked out. In training,
    `modality_dropout` masks each modality of each clip with that probability (never all of a
    clip's modalities at once), so the model also learns to work from any subset.

    The prediction comes from *members*: the temporal transformer over the tokens of all active
    modalities (`fusion`), and one unimodal head per modality (its projected tokens averaged over
    time -> linear; they exist whenever there are several modalities, for the auxiliary losses and
    OGM-GE of dfew_mm.balance). `fusion.mode` picks the members that predict: `transformer` (the
    fusion member alone), `late` (the unimodal heads) or `both`. Several members are mixed as
    probabilities, p = sum_j w_j softmax(z_j) / sum_j w_j over the members present in the clip, and
    the logits returned are log p. The weights `member_weights` are set after every epoch from each
    member's UAR on the validation split (`fusion.member_weights: validation`; see
    dfew_mm.balance.fit_member_weights) or stay equal (`equal`). Mixing probabilities rather than
    logits bounds what a member with a small weight can do: a face head that memorised the
    training clips is confidently wrong on new ones, and its logits would swamp an average.
    """

    def __init__(self, cfg, classes: Sequence[str] | None = None):  # the `model` config section (ModelConfig)
        super().__init__()
        self.cfg = cfg
        # the dataset's class names in label order (default: the default dataset's): the heads' outputs
        self.classes = tuple(classes) if classes is not None else default_classes()
        self.num_classes = len(self.classes)
        if self.num_classes < 2:
            raise ConfigError(f"a classifier needs at least two classes, got {list(self.classes)}")
        self.mode = cfg.fusion.mode
        if self.mode not in FUSION_MODES:
            raise ConfigError(f"model.fusion.mode={self.mode!r} is not one of {', '.join(FUSION_MODES)}")
        if cfg.fusion.member_weights not in MEMBER_WEIGHTS:
            raise ConfigError(f"model.fusion.member_weights={cfg.fusion.member_weights!r} is not one of "
                              f"{', '.join(MEMBER_WEIGHTS)}")
        self.modalities = resolve_modalities(list(cfg.modalities))
        self.encoders = nn.ModuleDict({m: ENCODERS[m](getattr(cfg, m)) for m in self.modalities})
        self.project = nn.ModuleDict({m: nn.Linear(self.encoders[m].output_dim, cfg.fusion.dim)
                                      for m in self.modalities})
        if self.mode != "late":
            self.fusion = TemporalFusion(cfg.fusion, len(self.modalities))
            self.head = build_head(cfg.fusion, self.num_classes)
        if self.mode != "transformer" or len(self.modalities) > 1:
            self.unimodal_heads = nn.ModuleDict({m: UnimodalHead(cfg.fusion.dim, self.num_classes)
                                                 for m in self.modalities})
        # the members whose predictions are mixed, in a fixed order (the order of `member_weights`)
        self.mixed = ([FUSION_MEMBER] if self.mode == "both" else []) + (
            self.modalities if self.mode != "transformer" else [])
        if self.mixed:
            self.register_buffer("member_weights", torch.ones(len(self.mixed)))
        self.modality_dropout = 0.0

    def _drop_mask(self, b: int, device: torch.device) -> torch.Tensor:
        """(B, M) bool: modality kept for that clip; at least one per clip."""
        keep = torch.rand(b, len(self.modalities), device=device) >= self.modality_dropout
        rescue = torch.randint(len(self.modalities), (b,), device=device)
        keep[torch.arange(b, device=device), rescue] |= ~keep.any(1)
        return keep

    @property
    def has_unimodal_heads(self) -> bool:
        return hasattr(self, "unimodal_heads")

    def forward(self, batch: Batch, modalities: Sequence[str] | None = None,
                return_unimodal: bool = False) -> torch.Tensor | Outputs:
        active = self.modalities if modalities is None else resolve_modalities(list(modalities))
        unknown = [m for m in active if m not in self.modalities]
        if unknown:
            raise ValueError(f"modalities {unknown} were not trained; this model has {self.modalities}")
        b = batch["label"].shape[0]
        device = batch["frame_time"].device
        keep = self._drop_mask(b, device) if self.training and self.modality_dropout > 0 else None
        tokens, masks, times, ids = [], [], [], []
        members, present = {}, {}
        for i, name in enumerate(self.modalities):
            if name not in active:
                continue
            features, mask, t = self.encoders[name].tokens(batch)  # (B, T_m, D), (B, T_m) x2
            x = self.project[name](features)  # (B, T_m, dim)
            if self.has_unimodal_heads:
                # the unimodal head sees every valid token of its modality, dropped for fusion or not,
                # so that its own loss trains the encoder on every clip
                members[name] = self.unimodal_heads[name](x, mask)  # (B, C)
                present[name] = mask.any(1)  # (B,)
            tokens.append(x)
            masks.append(mask & keep[:, i:i + 1] if keep is not None else mask)
            times.append(t)
            ids.append(i)
        if self.mode != "late":
            feature = self.fusion(tokens, masks, times, ids)
            members[FUSION_MEMBER] = self.head(feature, batch["label"] if self.training else None)  # (B, C)
            present[FUSION_MEMBER] = torch.ones(b, dtype=torch.bool, device=device)
        if self.mixed:
            kept = {m: p & keep[:, self.modalities.index(m)] if keep is not None and m in self.modalities else p
                    for m, p in present.items()}
            logits = self.mix(members, kept)
        else:
            logits = members[FUSION_MEMBER]
        return Outputs(logits, members, present) if return_unimodal else logits

    def mix(self, members: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, C) log of the weighted mean of the mixed members' probabilities over those present."""
        names = [m for m in self.mixed if m in members]
        weights = self.member_weights[[self.mixed.index(m) for m in names]]  # (J,)
        return mix_probabilities([members[m] for m in names], [present[m] for m in names], weights)

    def encoder_parameters(self, name: str) -> list[nn.Parameter]:
        """The parameters that turn one modality's input into its fusion tokens (encoder + projection)."""
        return [*self.encoders[name].parameters(), *self.project[name].parameters()]

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """Parameters of encoders that start from pretrained weights (trained at a lower rate)."""
        return [p for m in self.modalities if self.encoders[m].pretrained
                for p in self.encoders[m].parameters() if p.requires_grad]


def build_model(cfg, classes: Sequence[str] | None = None) -> EmotionModel:
    """Build with random weights from the `model` config section, with heads over `classes` (the dataset's
    class names; default: the default dataset's); no download happens here (see load_pretrained). Each
    encoder's settings are checked first (ConfigError listing the choices)."""
    for name in resolve_modalities(list(cfg.modalities)):
        ENCODERS[name].check_config(getattr(cfg, name))
    return EmotionModel(cfg, classes)


def load_pretrained(model: EmotionModel, cfg=None) -> EmotionModel:
    """Load the pretrained weights the config asks for (ImageNet, face checkpoint, AudioSet).

    Raises AssetError with offline instructions when weights cannot be fetched or do not fit.
    """
    cfg = cfg or model.cfg
    for name in model.modalities:
        model.encoders[name].load_pretrained(getattr(cfg, name))
    return model
