"""EmotionModel: the encoders of the chosen modalities, temporal fusion and a 7-class head."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dfew_mm.batch import Batch
from dfew_mm.config import ModelConfig
from dfew_mm.models.encoders import ENCODERS, build_encoder, resolve_modalities
from dfew_mm.models.fusion import TemporalFusion, build_head


class EmotionModel(nn.Module):
    """`model(batch, modalities=None) -> (B, 7)` logits.

    `modalities` may be any subset of the trained ones; the others are masked out. In training,
    `modality_dropout` masks each modality of each clip with that probability (never all of a
    clip's modalities at once), so the model also learns to work from any subset.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.modalities = resolve_modalities(list(cfg.modalities))
        self.encoders = nn.ModuleDict({m: build_encoder(m, cfg) for m in self.modalities})
        self.project = nn.ModuleDict({m: nn.Linear(self.encoders[m].output_dim, cfg.fusion.dim)
                                      for m in self.modalities})
        self.fusion = TemporalFusion(cfg.fusion, len(self.modalities))
        self.head = build_head(cfg.fusion)
        self.modality_dropout = 0.0

    def _tokens(self, name: str, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder features (B, T_m, D), mask (B, T_m), timestamps (B, T_m) seconds of one modality."""
        if name == "audio":
            if "audio_emb" in batch:  # frozen AST outputs from the embedding cache
                return batch["audio_emb"], batch["audio_emb_mask"], batch["audio_emb_time"]
            return self.encoders["audio"](batch["audio"], batch["audio_mask"], batch.get("audio_start"))
        if name == "video" and "video_emb" in batch:  # frozen ResNet outputs from the embedding cache
            return batch["video_emb"], batch["video_mask"], batch["frame_time"]
        return self.encoders[name](batch[name]), batch[f"{name}_mask"], batch["frame_time"]

    def _drop_mask(self, b: int, device: torch.device) -> torch.Tensor:
        """(B, M) bool: modality kept for that clip; at least one per clip."""
        keep = torch.rand(b, len(self.modalities), device=device) >= self.modality_dropout
        rescue = torch.randint(len(self.modalities), (b,), device=device)
        keep[torch.arange(b, device=device), rescue] |= ~keep.any(1)
        return keep

    def forward(self, batch: Batch, modalities: Sequence[str] | None = None) -> torch.Tensor:
        active = self.modalities if modalities is None else resolve_modalities(list(modalities))
        unknown = [m for m in active if m not in self.modalities]
        if unknown:
            raise ValueError(f"modalities {unknown} were not trained; this model has {self.modalities}")
        b = batch["label"].shape[0]
        device = batch["frame_time"].device
        keep = self._drop_mask(b, device) if self.training and self.modality_dropout > 0 else None
        tokens, masks, times, ids = [], [], [], []
        for i, name in enumerate(self.modalities):
            if name not in active:
                continue
            features, mask, t = self._tokens(name, batch)
            tokens.append(self.project[name](features))
            masks.append(mask & keep[:, i:i + 1] if keep is not None else mask)
            times.append(t)
            ids.append(i)
        feature = self.fusion(tokens, masks, times, ids)
        return self.head(feature, batch["label"] if self.training else None)

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """Parameters of encoders that start from pretrained weights (trained at a lower rate)."""
        return [p for m in self.modalities if getattr(self.encoders[m], "pretrained", False)
                for p in self.encoders[m].parameters() if p.requires_grad]


def build_model(cfg: ModelConfig) -> EmotionModel:
    """Build with random weights; no download happens here (see load_pretrained)."""
    return EmotionModel(cfg)


def load_pretrained(model: EmotionModel, cfg: ModelConfig | None = None) -> EmotionModel:
    """Load the pretrained weights the config asks for (ImageNet, face checkpoint, AudioSet).

    Raises AssetError with offline instructions when weights cannot be fetched or do not fit.
    """
    cfg = cfg or model.cfg
    for name in model.modalities:
        loader = ENCODERS[name][1]
        if loader is not None:
            loader(model.encoders[name], cfg)
    return model
