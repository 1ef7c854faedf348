"""Balanced multimodal training: unimodal auxiliary losses, member weights from validation and
on-the-fly gradient modulation.

A fused model trained on the fused loss alone lets its strongest branch win: a from-scratch face
CNN memorises a few hundred training clips long before a weak audio or pose branch has learned
anything, and once the training loss is low there is no gradient left for the others. On the
training clips a memorised face and a real cue look alike; only held-out clips tell them apart.
The remedies that live here (measured in the ablation table of docs/training.md):

- **Unimodal auxiliary losses** (as in Gradient-Blending, Wang et al. CVPR 2020, with fixed
  weights): every modality's own head (dfew_mm.models.fusion.UnimodalHead) gets a cross-entropy
  loss, `train.aux_weight` times the mean over modalities, next to the fused loss, so each encoder
  learns whatever its modality carries whether or not the fused head uses it yet.
- **Member weights from validation**: where several heads predict (`model.fusion.mode` late or
  both, dfew_mm.models.classifier), each head's weight in the probability mixture is its UAR on
  the validation split (carved out of the training fold) above what random guessing reaches on
  those clips (chance plus two standard deviations), set after every epoch before the checkpoint
  is chosen. A head that memorised its modality scores near
  chance on clips it has not seen and drops out of the mixture; heads that carry real signal keep
  their say. In the spirit of Gradient-Blending's held-out estimate of what each modality is
  worth, applied to the prediction instead of the loss weights.
- **OGM-GE** (on-the-fly gradient modulation with generalisation enhancement, Peng et al. CVPR
  2022): each step, the score of modality k is the mean softmax probability its unimodal head gives
  the true class on the clips of the batch. Peng et al. compare two modalities; for M modalities
  the ratio is against the mean of the others, rho_k = s_k / mean_{j != k} s_j, and the modality's
  coefficient is c_k = 1 - tanh(alpha * max(rho_k - 1, 0)): the modalities that fit the training
  batch better than the rest are slowed, the others keep full speed (with two modalities this is
  exactly the paper's rule). Because AdamW divides every gradient by its running scale, multiplying
  gradients by c_k would change almost nothing; the coefficient therefore scales the step size
  (learning rate) of that modality's encoder and projection for this step, which is what it does
  to plain SGD in the paper. GE adds Gaussian noise with the standard deviation of each modulated
  weight gradient, as in the paper, so that the slowed branch keeps exploring rather than settling
  into the memorised solution. Under DDP the scores are summed over all ranks before the
  coefficients are computed, so every rank applies the same coefficients.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from dfew_mm.config import TrainConfig
from dfew_mm.datasets import default_classes
from dfew_mm.distributed import Dist, gather
from dfew_mm.errors import ConfigError
from dfew_mm.inference import run_inference
from dfew_mm.metrics import classification_metrics
from dfew_mm.models.classifier import FUSION_MEMBER, EmotionModel, Outputs

log = logging.getLogger(__name__)


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor,
                         weight: torch.Tensor | None, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy over the clips where `keep` (B,) is true, with class weights as F.cross_entropy
    applies them (weighted mean); 0 when no clip is kept."""
    losses = F.cross_entropy(logits.float(), labels, weight=weight, reduction="none",
                             label_smoothing=label_smoothing)  # (B,)
    w = keep.float() * (weight[labels] if weight is not None else 1.0)  # (B,)
    return (losses * w).sum() / w.sum().clamp_min(1e-8)


class Balancer:
    """The training loss of one run and its balancing extras; `wants_unimodal` says whether the training
    step must ask the model for its members (`model(batch, return_unimodal=True)`).

    Loss: with a fusion member, its cross-entropy + `aux_weight` x the mean cross-entropy of the
    unimodal heads (each over the clips that have the modality); with late fusion alone, the mean of
    the unimodal cross-entropies (the heads are the prediction). Every member learns on its own
    loss; the mixture of the prediction is never trained as a whole, so no member can lean on another.
    """

    def __init__(self, model: EmotionModel, cfg: TrainConfig, class_weights: torch.Tensor | None = None):
        heads_trained = model.has_unimodal_heads and (cfg.aux_weight > 0 or model.mode != "transformer")
        if cfg.ogm_alpha > 0 and model.has_unimodal_heads and not heads_trained:
            raise ConfigError("train.ogm_alpha > 0 needs trained unimodal heads to score the modalities: "
                              "set train.aux_weight > 0 as well (or model.fusion.mode late/both)")
        self.cfg, self.weights = cfg, class_weights
        self.modalities = list(model.modalities)
        self.wants_unimodal = heads_trained or bool(model.mixed)
        self.modulate = heads_trained and cfg.ogm_alpha > 0
        self._scores = torch.zeros(2, len(self.modalities))  # (sum of true-class probability, clips) per modality
        self._coefficient_sums, self._steps = torch.zeros(len(self.modalities)), 0

    def _ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, weight=self.weights, label_smoothing=self.cfg.label_smoothing)

    def loss(self, out: Outputs | torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The run's loss (see the class docstring); records the OGM scores."""
        if not isinstance(out, Outputs):
            return self._ce(out, labels)
        unimodal = [m for m in self.modalities if m in out.members]
        aux = [masked_cross_entropy(out.members[m], labels, out.present[m], self.weights, self.cfg.label_smoothing)
               for m in unimodal]
        if FUSION_MEMBER not in out.members:
            loss = torch.stack(aux).mean()
        else:
            loss = self._ce(out.members[FUSION_MEMBER], labels)
            if aux and self.cfg.aux_weight > 0:
                loss = loss + self.cfg.aux_weight * torch.stack(aux).mean()
        if self.modulate:
            with torch.no_grad():
                for i, m in enumerate(self.modalities):
                    p_true = out.members[m].float().softmax(-1).gather(1, labels[:, None]).squeeze(1)  # (B,)
                    keep = out.present[m].float()
                    self._scores[0, i] += (p_true * keep).sum().cpu()
                    self._scores[1, i] += keep.sum().cpu()
        return loss

    def before_step(self, model: EmotionModel, opt: torch.optim.Optimizer, world: int = 1) -> None:
        """OGM-GE on the gradients accumulated since the last step: scale each modality's step size
        (its param groups' lr, reset by the scheduler's next step) and add GE noise where slowed."""
        if not self.modulate:
            return
        scores = self._scores.clone()
        self._scores.zero_()
        if world > 1:  # every rank must compute the same coefficients
            device = next(model.parameters()).device
            scores = scores.to(device)
            dist.all_reduce(scores)
            scores = scores.cpu()
        coefficients = ogm_coefficients(scores[0] / scores[1].clamp_min(1.0), self.cfg.ogm_alpha)
        self._coefficient_sums += coefficients
        self._steps += 1
        by_name = dict(zip(self.modalities, coefficients.tolist()))
        for group in opt.param_groups:
            c = by_name.get(group.get("modality"), 1.0)
            if c >= 1.0:
                continue
            group["lr"] *= c
            if self.cfg.ogm_ge:
                for p in group["params"]:
                    if p.grad is not None and p.ndim >= 2 and p.grad.numel() > 1:
                        p.grad.add_(torch.randn_like(p.grad) * p.grad.std())

    def epoch_record(self) -> dict[str, float]:
        """Mean OGM coefficient per modality since the last call (`ogm_<modality>`; empty when off)."""
        if not self.modulate or not self._steps:
            return {}
        means = (self._coefficient_sums / self._steps).tolist()
        self._coefficient_sums.zero_()
        self._steps = 0
        return {f"ogm_{m}": round(c, 4) for m, c in zip(self.modalities, means)}


def ogm_coefficients(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """(M,) mean true-class probabilities -> (M,) step coefficients in (0, 1]: 1 - tanh(alpha * relu(rho - 1))
    with rho_k = s_k / mean of the other modalities' scores. One modality: 1."""
    m = scores.numel()
    if m < 2:
        return torch.ones_like(scores)
    others = (scores.sum() - scores) / (m - 1)  # (M,)
    ratio = scores / others.clamp_min(1e-8)
    return 1.0 - torch.tanh(alpha * (ratio - 1.0).clamp_min(0.0))


def chance_uar_bound(labels, z: float = 2.0, n_classes: int | None = None) -> float:
    """What a member that guesses at random reaches on these clips: the chance UAR 1/C plus `z`
    standard deviations of the UAR of random guesses (each class's recall is a binomial share with
    p = 1/C over its n_c clips), C = `n_classes` of the dataset (default: the default dataset's). With
    7 classes, on 15 validation clips this is about 0.32, on 900 about 0.16: small validation sets must
    not hand a memorising member weight by luck."""
    n_classes = n_classes or len(default_classes())
    counts = np.bincount(np.asarray(labels), minlength=n_classes)
    counts = counts[counts > 0]
    p = 1.0 / n_classes
    sd = float(np.sqrt((p * (1 - p) / counts).sum()) / len(counts))
    return p + z * sd


def fit_member_weights(model: EmotionModel, loader, d: Dist, amp: bool) -> dict[str, float]:
    """Set `model.member_weights` from each mixed member's UAR on the clips of `loader` (the validation
    split; every rank its shard, gathered): w = max(UAR - chance bound, 0) (`chance_uar_bound`),
    computed over the clips where the member has input. Returns {"weight_<member>": w}; empty when the model mixes nothing or uses
    equal weights."""
    if not model.mixed or model.cfg.fusion.member_weights != "validation":
        return {}
    model.eval()
    labels, preds, present = [], {m: [] for m in model.mixed}, {m: [] for m in model.mixed}
    for batch, out in run_inference(lambda b: model(b, return_unimodal=True), loader, d.device, amp):
        labels.append(batch["label"].cpu())
        for m in model.mixed:
            preds[m].append(out.members[m].float().argmax(-1).cpu())
            present[m].append(out.present[m].cpu())
    shards = gather((labels, preds, present), d)
    y = torch.cat([t for shard in shards for t in shard[0]])  # (N,)
    weights = []
    for m in model.mixed:
        pred = torch.cat([t for shard in shards for t in shard[1][m]])
        there = torch.cat([t for shard in shards for t in shard[2][m]])
        if not there.any():  # no clip with this member's input: no say
            weights.append(0.0)
            continue
        uar = classification_metrics(y[there].numpy(), pred[there].numpy(), model.classes)["uar"]
        weights.append(max(uar - chance_uar_bound(y[there].numpy(), n_classes=model.num_classes), 0.0))
    model.member_weights.copy_(torch.tensor(weights))
    return {f"weight_{m}": round(w, 4) for m, w in zip(model.mixed, weights)}
