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
from dataclasses import dataclass, field, make_dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Sequence

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from dfew_mm.constants import (DEFAULT_FACE_SIZE, DEFAULT_FRAMES, MAX_AUDIO_FRAMES, MAX_FACE_SIZE, MAX_FRAMES,
                               MIN_FACE_SIZE)
from dfew_mm.datasets import DEFAULT_DATASET, get_dataset
from dfew_mm.errors import ConfigError
from dfew_mm.files import atomic_write_text
from dfew_mm.models.encoders import ENCODERS, default_modalities, resolve_modalities
from dfew_mm.models.fusion import FusionConfig

log = logging.getLogger(__name__)
SHIPPED_CONFIGS = "dfew_mm.configs"  # the top-level configs/ folder, shipped inside the package
BASE_KEY = "base"  # a YAML experiment names the config it starts from


@dataclass
class DataConfig:
    store: str = ""  # feature store written by preprocess/extract.py
    dataset: str = DEFAULT_DATASET  # dfew | mafw | ferv39k (dfew_mm.datasets): classes, split files, protocol
    root: str = ""  # the dataset's copy, for its split files (the fold lists)
    dfew_root: str = ""  # the same for DFEW (kept for configs and runs written before `root`)
    splits_dir: str = ""  # optional: split files elsewhere than under the root
    fold: int = 1  # a fold of the dataset's protocol: 1..5 (DFEW, MAFW), 1 (FERV39k's fixed split)
    val_fraction: float = 0.1  # stratified validation share carved out of the training fold
    frames: int = DEFAULT_FRAMES  # face/pose frames per clip fed to the model
    face_size: int = DEFAULT_FACE_SIZE  # px, must match the store
    audio_frames: int = 512  # filterbank frames per clip (10 ms each: 5.12 s)
    num_workers: int = 8  # DataLoader worker processes
    allow_missing: bool = False  # exclude split clips missing from the store instead of failing
    embedding_cache: str = ""  # frozen-backbone embeddings from `dfew_mm embed`
    # training-time augmentation, each modality's own (model.<name>.aug and model.audio's masks hold its
    # settings; docs/augmentation.md has the ablation behind the default); never in evaluation
    augment: bool = True
    hflip: float = 0.5  # chance of mirroring a training clip: faces, pose and blendshapes together


def model_config_class() -> type:
    """The `model` section as a dataclass: `modalities`, then one section per registered modality, named
    after it and typed by its encoder's `Config` (model.video.arch, model.pose.hidden, ...), then `fusion`.

    Derived from the registry (dfew_mm.models.encoders) at import, so that a modality is one encoder file
    plus its registry line; call it again after `registered(...)` for a schema with added modalities.
    """
    sections = [(name, cls.Config, field(default_factory=cls.Config)) for name, cls in ENCODERS.items()]
    cls = make_dataclass("ModelConfig", [("modalities", list[str], field(default_factory=default_modalities)),
                                         *sections, ("fusion", FusionConfig, field(default_factory=FusionConfig))])
    cls.__module__ = __name__  # pickled by reference to dfew_mm.config.ModelConfig (DataLoader workers)
    return cls


ModelConfig = model_config_class()


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
    # mixup across the clips of a batch: lam ~ Beta(mixup, mixup), one lam for all modalities and clips of a
    # batch (dfew_mm.batch.mix); 0 = off
    mixup: float = 0.0
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
    # GPU runs that repeat bit for bit: deterministic cuDNN/cuBLAS kernels and torch's deterministic mode, at
    # some speed (docs/reproducibility.md); CPU runs repeat without it
    deterministic: bool = False


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
    """Checks that types alone cannot express; each modality in use checks its own section (check_config)."""
    if not cfg.model.modalities:
        raise ConfigError(f"model.modalities is empty: choose any of {', '.join(ENCODERS)}")
    mods = resolve_modalities(list(cfg.model.modalities))
    choices = {
        "model.fusion.head": (cfg.model.fusion.head, ("linear", "arcface")),
        "train.class_balance": (cfg.train.class_balance, ("none", "weighted_loss", "sampler")),
        "train.device": (cfg.train.device, ("auto", "cpu", "cuda")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    dataset = get_dataset(cfg.data.dataset)
    if cfg.data.dfew_root and cfg.data.dataset != "dfew":
        raise ConfigError(f"data.dfew_root names a DFEW copy, but data.dataset={cfg.data.dataset}: give the "
                          f"{dataset.title} copy as data.root (--root)")
    if cfg.data.fold not in dataset.folds:
        raise ConfigError(f"data.fold={cfg.data.fold}: {dataset.title} has {dataset.folds_text()}")
    if not 0.0 <= cfg.data.hflip <= 1.0:
        raise ConfigError(f"data.hflip={cfg.data.hflip} must be between 0 and 1")
    if not 0.0 < cfg.data.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction={cfg.data.val_fraction} must be between 0 and 1")
    _check_ranges(cfg)
    for name in mods:
        ENCODERS[name].check_config(getattr(cfg.model, name), cfg.data)


# key -> (lowest, highest, lowest excluded?) for numbers; every value must also be finite. The modality
# sections' bounds come from their encoders (`ranges`).
RANGES: dict[str, tuple[float, float, bool]] = {
    "data.frames": (1, MAX_FRAMES, False),
    "data.face_size": (MIN_FACE_SIZE, MAX_FACE_SIZE, False),
    "data.audio_frames": (1, MAX_AUDIO_FRAMES, False),
    "data.num_workers": (0, 256, False),
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
    "train.mixup": (0.0, 100.0, False),
}


def _check_ranges(cfg: ExperimentConfig) -> None:
    """One-line errors for numbers outside what the pipeline can run with (and NaN or infinity)."""
    sections = {f"model.{name}.{key}": bounds for name, cls in ENCODERS.items() for key, bounds in cls.ranges.items()}
    for key, (low, high, open_low) in {**RANGES, **sections}.items():
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        if not math.isfinite(value) or value < low or value > high or (open_low and value == low):
            lower = f"above {low:g}" if open_low else f"at least {low:g}"
            raise ConfigError(f"{key}={value!r} is out of range: it must be a number {lower} and at most {high:g}")
    fusion = cfg.model.fusion
    if fusion.dim % fusion.heads:
        raise ConfigError(f"model.fusion.dim={fusion.dim} must be divisible by model.fusion.heads={fusion.heads}")


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
