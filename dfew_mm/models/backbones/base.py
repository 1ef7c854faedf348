"""What every backbone shares: preprocessing specs, the tuning policy (freezing, LoRA) and strict loading.

A backbone is an `nn.Module` built from an encoder config without any download. Each family
(one file each) provides:

    matches(arch) -> bool        classmethod: the arch strings it serves (syntax only, no I/O)
    spec_for(cfg)                classmethod: its preprocessing spec, resolved offline, without building
    output_dim                   feature size per frame / token
    spec                         VisionSpec or SpeechSpec, from the backbone's own processor settings
    blocks()                     its repeated blocks in order (ResNet stages, transformer layers)
    lora_targets                 module names that get LoRA adapters by default
    load_pretrained(cfg)         the separate weight-loading step: strict keys, offline advice on failure
    forward(...)                 see VisionBackbone / SpeechBackbone below

`apply_tuning` then freezes it (none / all / last_blocks / lora) the same way for every family.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dfew_mm.errors import AssetError, ConfigError

# `all_but_last` is how configs before the backbone registry asked for `last_blocks` with one block.
FREEZE_POLICIES = ("none", "all", "last_blocks", "lora", "all_but_last")
ADAPTER_MARK = "lora_"  # peft names adapter parameters ...lora_A.<adapter>.weight / ...lora_B...
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class VisionSpec:
    """How a vision backbone's weights expect their input, in the terms of an image processor."""

    size: int | None  # px side the network takes after the centre crop; None: any (fully convolutional)
    resize: int | None  # px shortest edge before the centre crop; None or == size: no crop
    interpolation: str  # bilinear | bicubic
    mean: tuple[float, float, float]  # RGB on the 0..1 scale
    std: tuple[float, float, float]
    source: str  # where these settings come from (processor file, timm config, published table)

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ConfigError(f"{self.source}: interpolation {self.interpolation!r} is not supported "
                              f"(choose from {', '.join(INTERPOLATIONS)})")

    def settings(self) -> tuple:
        """The values that change the preprocessing (not where they came from)."""
        return (self.size, self.resize, self.interpolation, tuple(round(v, 6) for v in self.mean),
                tuple(round(v, 6) for v in self.std))


@dataclass(frozen=True)
class SpeechSpec:
    """What a speech backbone reads and how its feature extractor normalises it."""

    input: str  # "fbank": the stored (F, 128) Kaldi filterbank; "waveform": 16 kHz mono samples
    sampling_rate: int  # Hz
    do_normalize: bool  # waveform: zero mean, unit variance per clip over its valid samples
    return_attention_mask: bool  # the model was trained with padding masks (else: zero padding only)
    source: str
    mean: float = 0.0  # fbank: dataset mean and std of the filterbank (AST scales by 2 * std)
    std: float = 1.0
    n_mels: int = 0  # Whisper: log-mel bins computed on device
    n_fft: int = 0
    hop_length: int = 0
    chunk_seconds: float = 0.0  # Whisper: every input is padded to this length

    def settings(self) -> tuple:
        return (self.input, self.sampling_rate, self.do_normalize, self.return_attention_mask,
                round(self.mean, 6), round(self.std, 6), self.n_mels, self.n_fft, self.hop_length,
                self.chunk_seconds)


class Backbone(nn.Module):
    """Base of every family; see the module docstring for the protocol."""

    family: ClassVar[str] = ""  # registry key
    describe: ClassVar[str] = ""  # one line for error messages: the arch strings it serves
    examples: ClassVar[tuple[str, ...]] = ()
    lora_targets: ClassVar[tuple[str, ...]] = ()
    published: ClassVar[dict] = {}  # repo id -> hub.Published settings, for building offline without files
    model_types: ClassVar[tuple[str, ...]] = ()  # Hugging Face model_type values served (hf/ families)
    output_dim: int
    spec: Any

    def __init__(self, arch: str):
        super().__init__()
        self.arch = arch

    @classmethod
    def matches(cls, arch: str) -> bool:
        raise NotImplementedError

    @classmethod
    def spec_for(cls, cfg):
        raise NotImplementedError

    def blocks(self) -> Sequence[nn.Module]:
        raise NotImplementedError

    def load_pretrained(self, cfg) -> None:
        raise NotImplementedError


class VisionBackbone(Backbone):
    """forward((N, 3, H, W) float, normalised as `spec` says) -> (N, output_dim) pooled image embeddings."""


class SpeechBackbone(Backbone):
    """forward(inputs, mask, n_tokens) -> tokens (B, n_tokens, D) over the clip window and their
    coverage (B, n_tokens) in 0..1: the share of each token's span that holds real audio.

    inputs/mask are (B, F, 128) + (B, F) for `fbank` backbones and (B, N) + (B, N) for `waveform`
    ones; F and N span the window of `window_seconds` (the encoder pads or crops to it).
    """

    def __init__(self, arch: str, window_seconds: float):
        super().__init__(arch)
        self.window_seconds = window_seconds


# -- tuning: freezing and LoRA ---------------------------------------------------------------------
def is_adapter(name: str) -> bool:
    return ADAPTER_MARK in name


def apply_tuning(backbone: Backbone, cfg, key: str) -> None:
    """Freeze `backbone` as `cfg.freeze` says (`key` names the config section in messages).

    none: everything trains. all: nothing trains. last_blocks: the last `cfg.trainable_blocks`
    blocks and whatever follows them (final norm, pooling head) train. lora: LoRA adapters
    (rank `cfg.lora_rank`, scale `cfg.lora_alpha / cfg.lora_rank`) are injected into the modules
    named `cfg.lora_targets` (default: the family's attention projections) and only they train.
    Parameters a model keeps frozen by design (Whisper's sinusoidal positions) stay frozen.
    """
    policy = cfg.freeze
    if policy not in FREEZE_POLICIES:
        raise ConfigError(f"{key}.freeze={policy!r} is not one of {', '.join(FREEZE_POLICIES)}")
    if policy == "none":
        return
    if policy == "all":
        backbone.requires_grad_(False)
        return
    if policy == "lora":
        inject_lora(backbone, cfg, key)
        for name, p in backbone.named_parameters():
            if not is_adapter(name):
                p.requires_grad_(False)
        return
    n = 1 if policy == "all_but_last" else cfg.trainable_blocks
    blocks = list(backbone.blocks())
    if not 1 <= n <= len(blocks):
        raise ConfigError(f"{key}.trainable_blocks={n}: {backbone.arch} has {len(blocks)} blocks; "
                          f"choose 1..{len(blocks)} (or {key}.freeze=none / all)")
    train_ids = {id(p) for block in blocks[-n:] for p in block.parameters()}
    order = {id(p): i for i, p in enumerate(backbone.parameters())}
    last_block_param = max(order[id(p)] for p in blocks[-1].parameters())
    for p in backbone.parameters():
        if id(p) not in train_ids and order[id(p)] <= last_block_param:  # params after the blocks train
            p.requires_grad_(False)


def inject_lora(backbone: Backbone, cfg, key: str) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    targets = list(cfg.lora_targets) or list(backbone.lora_targets)
    if not targets:
        raise ConfigError(f"{key}.freeze=lora: {backbone.arch} has no default LoRA targets; name the "
                          f"modules with {key}.lora_targets=[...] (e.g. conv2 for a ResNet)")
    if cfg.lora_rank < 1:
        raise ConfigError(f"{key}.lora_rank={cfg.lora_rank} must be at least 1")
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                        target_modules=targets)
    try:
        inject_adapter_in_model(config, backbone)
    except ValueError as err:  # peft: target modules not found
        raise ConfigError(f"{key}.lora_targets={targets} do not name modules of {backbone.arch}: {err}") from err


def frozen_modules(module: nn.Module) -> list[nn.Module]:
    """The largest submodules whose parameters are all frozen: in training they run in eval mode
    (BatchNorm keeps its running statistics, no dropout)."""
    found: list[nn.Module] = []
    skip: set[int] = set()
    for m in module.modules():
        if id(m) in skip:
            continue
        params = list(m.parameters())
        if params and not any(p.requires_grad for p in params):
            found.append(m)
            skip.update(id(s) for s in m.modules())
    return found


def trainable_parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# -- strict loading ----------------------------------------------------------------------------------
def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, target: str) -> None:
    """Load `state` into `module`; every key must match in name and shape, except LoRA adapters,
    which start fresh (their wrapped layers keep the pretrained weight under `.base_layer.`)."""
    own = module.state_dict()
    wrapped = {k.replace(".base_layer.", "."): k for k in own if ".base_layer." in k}
    mapped = {wrapped.get(k, k): v for k, v in state.items()}
    missing = [k for k in own if k not in mapped and not is_adapter(k)]
    unexpected = [k for k in mapped if k not in own]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in mapped.items()
             if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{label} {len(keys)} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong))
                 if keys]
        raise AssetError(f"{source} does not fit {target}: " + "; ".join(parts))
    module.load_state_dict(mapped, strict=False)


def read_state_file(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A local state dict: .safetensors, or a torch file (optionally wrapped in 'state_dict' / 'model'),
    or a folder holding model.safetensors / pytorch_model.bin."""
    path = Path(path)
    if path.is_dir():
        files = [path / name for name in ("model.safetensors", "pytorch_model.bin") if (path / name).is_file()]
        if not files:
            raise AssetError(f"{what}: folder {path} holds neither model.safetensors nor pytorch_model.bin")
        path = files[0]
    if not path.is_file():
        raise AssetError(f"{what} {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickled nn.Module (not a state dict) cannot be read safely
        raise AssetError(
            f"{what} {path} is not a plain state dict ({type(err).__name__}). If it is a whole pickled model "
            "(as HSEmotion's .pt files are), convert it once where its code is importable: "
            f"python -c \"import torch; m = torch.load('{path}', weights_only=False); "
            f"torch.save(m.state_dict(), '{path.with_suffix('')}_state.pt')\"") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AssetError(f"{what} {path} does not hold a state dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in state.items()}


# -- shared utilities ---------------------------------------------------------------------------------
def masked_pool(hidden: torch.Tensor, valid: torch.Tensor, n_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, D) frames + (B, L) validity -> (B, n, D) means of the valid frames in n equal spans, and
    (B, n) the valid share of each span (0 where a span holds no valid frame; its token is then 0)."""
    v = valid.float().unsqueeze(1)  # (B, 1, L)
    coverage = F.adaptive_avg_pool1d(v, n_tokens).squeeze(1)  # (B, n)
    summed = F.adaptive_avg_pool1d(hidden.transpose(1, 2) * v, n_tokens).transpose(1, 2)  # (B, n, D)
    tokens = summed / coverage.clamp_min(1e-6).unsqueeze(-1)
    return tokens * (coverage > 0).unsqueeze(-1), coverage


def attention_projections(module: nn.Module) -> tuple[str, ...]:
    """The query and value projections of a transformer's attention (LoRA's classic targets), by their names."""
    names = [n for n, _ in module.named_modules()]
    for query, value in (("q_proj", "v_proj"), ("query", "value")):
        if any(n.endswith("." + query) for n in names) and any(n.endswith("." + value) for n in names):
            return query, value
    return ()


def with_overrides(config, overrides: Mapping[str, Any], key: str, arch: str):
    """A Hugging Face config rebuilt with `model.<m>.arch_kwargs` (so that derived values, such as the number
    of convolution layers, follow); unknown names are errors, not silent attributes."""
    if not overrides:
        return config
    fields = ({f.name for f in dataclasses.fields(config) if f.init} if dataclasses.is_dataclass(config)
              else set(inspect.signature(type(config).__init__).parameters))
    unknown = [name for name in overrides if name not in fields]
    if unknown:
        raise ConfigError(f"{key}.arch_kwargs.{unknown[0]}: {arch} ({type(config).__name__}) has no setting "
                          f"'{unknown[0]}'")
    values = {k: v for k, v in config.to_dict().items() if k in fields}
    return type(config)(**{**values, **overrides})
