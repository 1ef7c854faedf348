"""Temporal transformer fusion over the tokens of the active modalities, and the classifier heads
(C outputs, C = the number of classes of the dataset the model is built for)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class FusionConfig:
    """The `model.fusion` section."""

    dim: int = 256
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    head: str = "linear"  # linear | arcface
    # Which heads predict (dfew_mm/models/classifier.py): transformer = the temporal transformer's CLS
    # head; late = one head per modality (its tokens pooled over time -> linear); both = all of them.
    # Several heads are mixed as probabilities with weights from their validation UAR (validation)
    # or equal weights (equal).
    mode: str = "late"  # transformer | late | both
    member_weights: str = "validation"  # validation | equal
    arcface_margin: float = 0.2
    arcface_scale: float = 30.0


TIME_UNIT_S = 0.01  # timestamps are embedded in 10 ms steps, so 10 ms apart is resolvable
FUSION_MODES = ("transformer", "late", "both")
MEMBER_WEIGHTS = ("validation", "equal")


def time_embedding(seconds: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of real timestamps: (...,) seconds -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=seconds.device) / half)  # (dim/2,)
    angles = (seconds.float() / TIME_UNIT_S).unsqueeze(-1) * freqs  # (..., dim/2)
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return F.pad(emb, (0, dim - 2 * half))


class ArcFaceHead(nn.Module):
    """Additive angular margin: logits s*cos(theta), with cos(theta + m) for the true class in training."""

    def __init__(self, dim: int, n_classes: int, margin: float, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_classes, dim))
        nn.init.xavier_uniform_(self.weight)
        self.margin, self.scale = margin, scale

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cosine = F.linear(F.normalize(x.float()), F.normalize(self.weight.float()))  # (B, C)
        if labels is None:
            return self.scale * cosine
        theta = torch.acos(cosine.clamp(-1 + 1e-6, 1 - 1e-6))
        target = F.one_hot(labels, self.weight.shape[0]).bool()
        return self.scale * torch.where(target, torch.cos(theta + self.margin), cosine)


class LinearHead(nn.Module):
    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.fc = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(x)


class TemporalFusion(nn.Module):
    """Tokens of several modalities -> (B, dim) CLS feature.

    Each token gets its modality embedding and the sinusoidal embedding of its timestamp in
    seconds; padding and missing modalities are excluded through the key padding mask. The CLS
    token is always valid, so a clip with no valid token at all still gives a finite output.
    """

    def __init__(self, cfg: FusionConfig, n_modalities: int):
        super().__init__()
        self.dim = cfg.dim
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.modality_embedding = nn.Embedding(n_modalities, cfg.dim)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 4 * cfg.dim, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        nn.init.normal_(self.cls, std=0.02)

    def forward(self, tokens: list[torch.Tensor], masks: list[torch.Tensor], times: list[torch.Tensor],
                modality_ids: list[int]) -> torch.Tensor:
        parts = []
        for x, t, m in zip(tokens, times, modality_ids):  # x (B, T_m, dim), t (B, T_m)
            parts.append(x + self.modality_embedding.weight[m] + time_embedding(t, self.dim).to(x.dtype))
        b = tokens[0].shape[0]
        x = torch.cat([self.cls.expand(b, -1, -1).to(parts[0].dtype), *parts], dim=1)  # (B, 1 + sum T_m, dim)
        valid = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device), *masks], dim=1)
        x = self.transformer(x, src_key_padding_mask=~valid)
        return self.norm(x[:, 0])  # (B, dim)


class UnimodalHead(nn.Module):
    """One modality's own classifier: its valid tokens (B, T, dim) averaged over time -> (B, C) logits.

    A clip without any valid token of the modality pools to zeros and gets the bias alone; the
    caller knows it is absent (`mask.any(1)`) and leaves it out of losses and late fusion.
    """

    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
        pooled = (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # (B, dim)
        return self.fc(self.norm(pooled))


def mix_probabilities(logits: list[torch.Tensor], present: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Per clip, log sum_j w_j p_j / sum_j w_j over the members j present: J x (B, C) logits, J x (B,)
    bool, (J,) weights -> (B, C) logits.

    A clip where no member with a positive weight has input (say, no body found in a model whose
    only informative head is the pose head) takes the weighted members anyway, which then predict
    from their bias alone, as a single-modality model does without its input; members with no
    weight never decide. Only when every weight is zero (before the first validation) do the
    present members count alike.
    """
    probs = torch.stack(logits).float().softmax(-1)  # (J, B, C)
    there = torch.stack(present).float()  # (J, B)
    weights = weights.float().unsqueeze(1)  # (J, 1)
    w = weights * there  # (J, B)
    # torch.where, not a Python branch: no host sync, and torch.compile keeps one graph
    fallback = torch.where((weights > 0).any(), weights.expand_as(w), there)
    w = torch.where(w.sum(0, keepdim=True) > 0, w, fallback)
    w = torch.where(w.sum(0, keepdim=True) > 0, w, torch.ones_like(w))  # nothing present, no weights: all alike
    mixed = (w.unsqueeze(-1) * probs).sum(0) / w.sum(0).unsqueeze(-1)  # (B, C)
    return mixed.clamp_min(1e-12).log()


def build_head(cfg: FusionConfig, n_classes: int) -> nn.Module:
    if cfg.head == "arcface":
        return ArcFaceHead(cfg.dim, n_classes, cfg.arcface_margin, cfg.arcface_scale)
    return LinearHead(cfg.dim, n_classes)
