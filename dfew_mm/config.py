"""Experiment configuration: dataclass defaults -> YAML file(s) -> `key=value` overrides.

The dataclass defaults are the default experiment (configs/default.yaml only names it). A YAML
experiment lists what differs from a named base (`base: default`); bases chain. OmegaConf does
the merging and type checking; this module adds the schema, readable errors (unknown keys list
the valid ones) and the run-directory record (resolved config + git SHA).
"""

from __future__ import annotations

import json
import logging
import math
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from dfew_mm.constants import (DEFAULT_FACE_SIZE, DEFAULT_FRAMES, DEFAULT_MODALITIES, MAX_AUDIO_FRAMES, MAX_FACE_SIZE,
                               MAX_FRAMES, MIN_FACE_SIZE, MODALITIES)
from dfew_mm.errors import ConfigError
from dfew_mm.files import atomic_write_text

log = logging.getLogger(__name__)
SHIPPED_CONFIGS = "dfew_mm.configs"  # the top-level configs/ folder, shipped inside the package
BASE_KEY = "base"  # a YAML experiment names the config it starts from


@dataclass
class DataConfig:
    store: str = ""  # feature store written by preprocess/extract.py
    dfew_root: str = ""  # DFEW copy with EmoLabel_DataSplit/ (for the fold lists)
    splits_dir: str = ""  # optional: split CSVs elsewhere than DFEW_ROOT/EmoLabel_DataSplit
    fold: int = 1  # 1..5
    val_fraction: float = 0.1  # stratified validation share carved out of the training fold
    frames: int = DEFAULT_FRAMES  # face/pose frames per clip fed to the model
    face_size: int = DEFAULT_FACE_SIZE  # px, must match the store
    audio_frames: int = 512  # filterbank frames per clip (10 ms each: 5.12 s)
    num_workers: int = 8  # DataLoader worker processes
    allow_missing: bool = False  # exclude split clips missing from the store instead of failing
    embedding_cache: str = ""  # frozen-backbone embeddings from `dfew_mm embed`


@dataclass
class VideoEncoderConfig:
    # resnet18 | resnet34 | resnet50 (torchvision), timm/<model name>, hf/<Hugging Face repo id or local folder>
    arch: str = "resnet18"
    pretrained: bool = True  # the backbone's published weights (torchvision ImageNet, timm, Hugging Face)
    checkpoint: str = ""  # local weights instead: a state dict (e.g. an HSEmotion face model) or a Hugging Face folder
    arch_kwargs: dict[str, Any] = field(default_factory=dict)  # timm.create_model kwargs / Hugging Face config keys
    # none | all | last_blocks (the last trainable_blocks train) | lora (adapters only); all_but_last = 1 last block
    freeze: str = "none"
    trainable_blocks: int = 1  # last_blocks: ResNet stages or transformer layers that train, counted from the top
    lora_rank: int = 8
    lora_alpha: float = 16.0  # adapter scale = lora_alpha / lora_rank
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=list)  # module names; empty: the backbone's attention projections
    input_size: int = 0  # px the backbone sees; 0: its own input size (ResNets: as stored)
    crop_pct: float = 0.0  # centre-crop share after resizing; 0: the backbone's own (1 / its resize ratio), 1: no crop
    # backbone: the backbone's own mean/std (what pretrained weights expect); imagenet: ImageNet mean/std;
    # per_image: each face crop to zero mean, unit variance, which makes a from-scratch backbone blind to
    # exposure (low light)
    normalise: str = "backbone"  # backbone | imagenet | per_image


@dataclass
class PoseEncoderConfig:
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.1


@dataclass
class BlendshapeEncoderConfig:
    hidden: int = 128
    layers: int = 2
    dropout: float = 0.1


@dataclass
class AudioEncoderConfig:
    # ast (filterbank) | hf/<Hugging Face repo id or local folder> of a WavLM, HuBERT, wav2vec 2.0 or Whisper
    # model (16 kHz waveform)
    arch: str = "ast"
    pretrained: bool = True
    checkpoint: str = ""  # where the weights come from: "" = the arch's own (ast: AudioSet AST), or a local folder
    arch_kwargs: dict[str, Any] = field(default_factory=dict)  # Hugging Face config keys (hf/ archs)
    freeze: str = "none"  # none | all | last_blocks | lora (all_but_last = last_blocks with 1 block)
    trainable_blocks: int = 1
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=list)
    # AST architecture (arch=ast); the AudioSet checkpoint is 768 / 12 / 12 / 3072.
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    # The clip window in 10 ms frames: the filterbank frames AST sees (padded/cropped), or max_length * 160
    # waveform samples; >= data.audio_frames
    max_length: int = 512
    tokens_per_second: float = 4.0  # encoder outputs are pooled to this rate for fusion


@dataclass
class FusionConfig:
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


@dataclass
class ModelConfig:
    modalities: list[str] = field(default_factory=lambda: list(DEFAULT_MODALITIES))
    video: VideoEncoderConfig = field(default_factory=VideoEncoderConfig)
    pose: PoseEncoderConfig = field(default_factory=PoseEncoderConfig)
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    blendshapes: BlendshapeEncoderConfig = field(default_factory=BlendshapeEncoderConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    seed: int = 0
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-4
    backbone_lr_scale: float = 0.1  # pretrained encoders learn at lr * this
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    grad_accum: int = 1
    grad_clip: float = 1.0
    label_smoothing: float = 0.1
    class_balance: str = "weighted_loss"  # none | weighted_loss | sampler
    modality_dropout: float = 0.2  # per-sample chance of dropping each active modality
    # Balanced multimodal training (see dfew_mm/balance.py and the README's ablation table):
    aux_weight: float = 1.0  # weight of the unimodal heads' own losses (mean over modalities) beside the fused loss
    ogm_alpha: float = 0.0  # OGM-GE: slow the encoders of modalities that fit the training batch best; 0 = off
    ogm_ge: bool = True  # OGM-GE: Gaussian noise on modulated gradients (generalisation enhancement)
    # per modality, e.g. {video: 0.3}: learning-rate factor and weight decay of its encoder + projection
    encoder_lr_scale: dict[str, float] = field(default_factory=dict)
    encoder_weight_decay: dict[str, float] = field(default_factory=dict)
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # CUDA only
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class ExperimentConfig:
    """The default experiment: a DFEW run on one GPU (configs/default.yaml names it)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _valid_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        name = f"{prefix}{key}"
        keys.extend(_valid_keys(value, name + ".") if isinstance(value, DictConfig) else [name])
    return keys


def _explain(err: OmegaConfBaseException, schema: DictConfig, source: str) -> ConfigError:
    if isinstance(err, (ConfigKeyError, ConfigAttributeError)):
        valid = ", ".join(_valid_keys(schema))
        return ConfigError(f"{source}: unknown key '{err.full_key}'. Valid keys: {valid}")
    return ConfigError(f"{source}: {err.msg} (key '{err.full_key}')")


def shipped_configs() -> dict[str, Traversable]:
    """Name -> file of every config shipped with the package (configs/*.yaml)."""
    return {f.name.removesuffix(".yaml"): f for f in resources.files(SHIPPED_CONFIGS).iterdir()
            if f.name.endswith(".yaml")}


def resolve_config_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path | Traversable:
    """A path (absolute, or relative to `relative_to`), or a bare name such as `tiny` for a shipped config."""
    path = Path(name_or_path)
    for candidate in ([relative_to / path] if relative_to is not None and not path.is_absolute() else []) + [path]:
        if candidate.is_file():
            return candidate
    shipped = shipped_configs()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise ConfigError(f"config file '{name_or_path}' not found (shipped configs: {', '.join(sorted(shipped))})")


def _read_yaml(source: Path | Traversable) -> dict:
    try:
        data = yaml.safe_load(source.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{source}: cannot read the config file ({err})") from err
    if data is None:  # an empty file, or comments only
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config file must be a mapping of sections (data:, model:, train:), "
                          f"not a {type(data).__name__}")
    return data


def _config_chain(name_or_path: str | Path, relative_to: Path | None = None,
                  seen: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    """(source, mapping) of a config and its bases, the farthest base first."""
    source = resolve_config_path(name_or_path, relative_to)
    if str(source) in seen:
        raise ConfigError(f"config bases form a loop: {' -> '.join([*seen, str(source)])}")
    data = _read_yaml(source)
    base = data.pop(BASE_KEY, None)
    chain = []
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{source}: '{BASE_KEY}' must name a config, e.g. '{BASE_KEY}: default'")
        folder = source.parent if isinstance(source, Path) else None
        chain = _config_chain(base, folder, (*seen, str(source)))
    return chain + [(str(source), data)]


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Compose defaults, an optional YAML file (with its bases) and `a.b=value` overrides into a checked config."""
    schema = OmegaConf.structured(ExperimentConfig)
    cfg = schema
    for source, data in (_config_chain(path) if path is not None else []):
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(data))
        except OmegaConfBaseException as err:
            raise _explain(err, schema, source) from err
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value, e.g. train.epochs=5")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as err:
            raise _explain(err, schema, f"override '{item}'") from err
    result: ExperimentConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    validate(result)
    return result


def validate(cfg: ExperimentConfig) -> None:
    """Checks that types alone cannot express."""
    mods = cfg.model.modalities
    if not mods:
        raise ConfigError(f"model.modalities is empty: choose any of {', '.join(MODALITIES)}")
    unknown = [m for m in mods if m not in MODALITIES]
    if unknown:
        raise ConfigError(f"unknown modality {unknown}: valid modalities are {', '.join(MODALITIES)}")
    choices = {
        "model.video.normalise": (cfg.model.video.normalise, ("backbone", "imagenet", "per_image")),
        "model.fusion.head": (cfg.model.fusion.head, ("linear", "arcface")),
        "train.class_balance": (cfg.train.class_balance, ("none", "weighted_loss", "sampler")),
        "train.device": (cfg.train.device, ("auto", "cpu", "cuda")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    if not 1 <= cfg.data.fold <= 5:
        raise ConfigError(f"data.fold={cfg.data.fold}: DFEW has folds 1..5")
    if "audio" in mods and cfg.data.audio_frames > cfg.model.audio.max_length:
        raise ConfigError(f"data.audio_frames={cfg.data.audio_frames} exceeds model.audio.max_length="
                          f"{cfg.model.audio.max_length}: raise model.audio.max_length or lower data.audio_frames")
    if not 0.0 < cfg.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction={cfg.data.val_fraction} must be between 0 and 1")
    _check_ranges(cfg)


# key -> (lowest, highest, lowest excluded?) for numbers; every value must also be finite.
RANGES: dict[str, tuple[float, float, bool]] = {
    "data.frames": (1, MAX_FRAMES, False),
    "data.face_size": (MIN_FACE_SIZE, MAX_FACE_SIZE, False),
    "data.audio_frames": (1, MAX_AUDIO_FRAMES, False),
    "data.num_workers": (0, 256, False),
    "model.video.input_size": (0, 1024, False),
    "model.pose.hidden": (1, 1 << 16, False),
    "model.pose.layers": (1, 64, False),
    "model.pose.dropout": (0.0, 1.0, False),
    "model.audio.hidden_size": (1, 1 << 16, False),
    "model.audio.num_layers": (1, 256, False),
    "model.audio.num_heads": (1, 1024, False),
    "model.audio.intermediate_size": (1, 1 << 18, False),
    "model.audio.max_length": (1, MAX_AUDIO_FRAMES, False),
    "model.audio.tokens_per_second": (0.0, 1000.0, True),
    "model.fusion.dim": (1, 1 << 16, False),
    "model.fusion.layers": (1, 256, False),
    "model.fusion.heads": (1, 1024, False),
    "model.fusion.dropout": (0.0, 1.0, False),
    "model.fusion.arcface_margin": (0.0, math.pi / 2, False),
    "model.fusion.arcface_scale": (0.0, 1e4, True),
    "train.epochs": (1, 1 << 20, False),
    "train.batch_size": (1, 1 << 20, False),
    "train.lr": (0.0, 10.0, True),
    "train.backbone_lr_scale": (0.0, 1e3, False),
    "train.weight_decay": (0.0, 1e3, False),
    "train.warmup_epochs": (0.0, 1 << 20, False),
    "train.grad_accum": (1, 1 << 16, False),
    "train.grad_clip": (0.0, 1e6, False),
    "train.label_smoothing": (0.0, 1.0, False),
    "train.modality_dropout": (0.0, 1.0, False),
}


def _check_ranges(cfg: ExperimentConfig) -> None:
    """One-line errors for numbers outside what the pipeline can run with (and NaN or infinity)."""
    for key, (low, high, open_low) in RANGES.items():
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if not math.isfinite(value) or value < low or value > high or (open_low and value == low):
            lower = f"above {low:g}" if open_low else f"at least {low:g}"
            raise ConfigError(f"{key}={value!r} is out of range: it must be a number {lower} and at most {high:g}")
    fusion, audio = cfg.model.fusion, cfg.model.audio
    if fusion.dim % fusion.heads:
        raise ConfigError(f"model.fusion.dim={fusion.dim} must be divisible by model.fusion.heads={fusion.heads}")
    if not audio.pretrained and audio.hidden_size % audio.num_heads:
        raise ConfigError(f"model.audio.hidden_size={audio.hidden_size} must be divisible by "
                          f"model.audio.num_heads={audio.num_heads}")


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg))  # type: ignore[return-value]


def to_yaml(cfg: ExperimentConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Rebuild a config saved in a checkpoint or run directory (checked against the schema)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ExperimentConfig), data)
    except OmegaConfBaseException as err:
        raise _explain(err, OmegaConf.structured(ExperimentConfig), "saved config") from err
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def git_sha() -> str:
    """SHA of the checkout the code runs from, '-dirty' if it has uncommitted changes; 'unknown' for an
    installed package (whose folder is not a checkout, even if it sits inside one, e.g. in .venv/)."""
    repo = Path(__file__).resolve().parent.parent
    if not (repo / ".git").exists():
        return "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def write_run_record(run_dir: str | Path, cfg: ExperimentConfig, argv: Sequence[str] = ()) -> None:
    """Save the resolved config, git SHA and environment in a run directory."""
    import torch  # local: keeps `dfew_mm --help` fast

    run_dir = Path(run_dir)
    atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    env = {
        "git_sha": git_sha(),
        "argv": list(argv) or sys.argv,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": torch.cuda.device_count(),
        "host": platform.node(),
    }
    atomic_write_text(run_dir / "environment.json", json.dumps(env, indent=2) + "\n")
