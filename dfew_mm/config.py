"""Experiment configuration: dataclass defaults -> YAML file(s) -> `key=value` overrides.

The dataclass defaults are the default experiment (configs/default.yaml only names it). A YAML
experiment lists what differs from a named base (`base: default`); bases chain. OmegaConf does
the merging and type checking; this module adds the schema, readable errors (unknown keys list
the valid ones) and the run-directory record (resolved config + git SHA).
"""

from __future__ import annotations

import json
import logging
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

from dfew_mm.constants import DEFAULT_FACE_SIZE, DEFAULT_FRAMES, MODALITIES
from dfew_mm.errors import ConfigError

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
    arch: str = "resnet18"  # resnet18 | resnet34 | resnet50
    pretrained: bool = True  # ImageNet weights from torchvision
    checkpoint: str = ""  # optional face-pretrained state dict (e.g. MS-Celeb ResNet-18)
    freeze: str = "none"  # none | all | all_but_last
    input_size: int = 0  # px the faces are resized to on device before the ResNet; 0 = as stored
    # imagenet: fixed ImageNet mean/std (what pretrained weights expect); per_image: each face crop
    # to zero mean, unit variance, which makes a from-scratch backbone blind to exposure (low light)
    normalise: str = "imagenet"  # imagenet | per_image


@dataclass
class PoseEncoderConfig:
    hidden: int = 256
    layers: int = 2
    dropout: float = 0.1


@dataclass
class AudioEncoderConfig:
    pretrained: bool = True
    checkpoint: str = "MIT/ast-finetuned-audioset-10-10-0.4593"  # Hugging Face id or local dir
    freeze: str = "none"  # none | all | all_but_last
    # Architecture, used when pretrained is false (tiny configs); a checkpoint brings its own.
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_length: int = 512  # filterbank frames the AST sees (input padded/cropped); >= data.audio_frames
    tokens_per_second: float = 4.0  # AST patch tokens are pooled to this rate for fusion


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
    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    video: VideoEncoderConfig = field(default_factory=VideoEncoderConfig)
    pose: PoseEncoderConfig = field(default_factory=PoseEncoderConfig)
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
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
        "model.video.arch": (cfg.model.video.arch, ("resnet18", "resnet34", "resnet50")),
        "model.video.freeze": (cfg.model.video.freeze, ("none", "all", "all_but_last")),
        "model.video.normalise": (cfg.model.video.normalise, ("imagenet", "per_image")),
        "model.audio.freeze": (cfg.model.audio.freeze, ("none", "all", "all_but_last")),
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
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    env = {
        "git_sha": git_sha(),
        "argv": list(argv) or sys.argv,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": torch.cuda.device_count(),
        "host": platform.node(),
    }
    (run_dir / "environment.json").write_text(json.dumps(env, indent=2) + "\n")
