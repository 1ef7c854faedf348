"""Hugging Face plumbing shared by the `hf/...` families: where configs, processor settings and weights
come from, offline first.

A backbone named `hf/<repo id or local folder>` is built without any download:
  1. `model.<m>.checkpoint` when it is a local folder (weights, config and processor settings),
  2. the arch itself when it names a local folder,
  3. the Hugging Face cache (`HF_HOME` / `HF_HUB_CACHE`) for a repo id,
  4. the family's table of published settings for the repo ids it documents.
Anything else stops with the commands that make the files available offline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dfew_mm.errors import AssetError, ConfigError

log = logging.getLogger(__name__)
HF_PREFIX = "hf/"


@dataclass(frozen=True)
class Published:
    """A checkpoint's published settings: the architecture keys of its config and its processor's."""

    config_class: Callable[..., Any]
    config: dict[str, Any]
    processor_class: Callable[..., Any]
    processor: dict[str, Any]
    url: str = field(default="")  # where the values can be checked

    def build_config(self):
        return self.config_class(**self.config)

    def build_processor(self):
        return self.processor_class(**self.processor)


def hf_name(arch: str) -> str:
    """`hf/openai/clip-vit-base-patch16` -> `openai/clip-vit-base-patch16` (a repo id or a local folder)."""
    return arch[len(HF_PREFIX):]


def sources(arch: str, checkpoint: str) -> list[str]:
    """Where config and processor settings are looked up, in order: the checkpoint (a local folder or
    another repo id), then the arch's own name (a local folder, or a repo id found in the cache)."""
    return list(dict.fromkeys(s for s in (checkpoint, hf_name(arch)) if s))


def weights_source(arch: str, checkpoint: str) -> str:
    return checkpoint or hf_name(arch)


def offline_advice(arch: str, key: str, source: str) -> str:
    repo = source if not Path(source).is_dir() else hf_name(arch)
    return (f"Offline: on a machine with internet run `huggingface-cli download {repo} --local-dir DIR` "
            f"(or `hf download {repo} --local-dir DIR`), copy DIR here and set {key}.checkpoint=DIR; or fill the "
            "Hugging Face cache there (HF_HOME / HF_HUB_CACHE), copy it and set HF_HUB_OFFLINE=1; "
            f"or set {key}.pretrained=false to train from random weights.")


def files_advice(arch: str, key: str, name: str) -> str:
    """What to do when a backbone cannot even be built offline (its config is needed with random weights too)."""
    return (f"Building {arch} needs its config.json and preprocessor_config.json, with or without pretrained weights. "
            f"On a machine with internet run `huggingface-cli download {name} --local-dir DIR` (or `hf download "
            f"{name} --local-dir DIR`), copy DIR here and set {key}.checkpoint=DIR (or {key}.arch=hf/DIR); or fill "
            "the Hugging Face cache there (HF_HOME / HF_HUB_CACHE), copy it and set HF_HUB_OFFLINE=1.")


def resolve_config(arch: str, checkpoint: str, table: dict[str, Published], key: str):
    """(config, where it came from): local folder or cache via AutoConfig, else the published table."""
    from transformers import AutoConfig

    last: Exception | None = None
    for source in sources(arch, checkpoint):
        try:
            return AutoConfig.from_pretrained(source, local_files_only=True), source
        except (OSError, ValueError) as err:
            last = err
            log.debug("no local config in %s: %s", source, err)
    name = hf_name(arch)
    if name in table:
        return table[name].build_config(), f"published settings of {name} (dfew_mm table)"
    raise ConfigError(
        f"{key}.arch={arch}: no config found offline ({last}); the built-in table covers {', '.join(sorted(table))}. "
        + files_advice(arch, key, name))


def resolve_processor(arch: str, checkpoint: str, table: dict[str, Published], key: str, kind: str):
    """(image processor or feature extractor, where it came from), found like the config."""
    from transformers import AutoFeatureExtractor, AutoImageProcessor

    auto = AutoImageProcessor if kind == "image" else AutoFeatureExtractor
    last: Exception | None = None
    for source in sources(arch, checkpoint):
        try:
            return auto.from_pretrained(source, local_files_only=True), f"{source} (preprocessor_config.json)"
        except (OSError, ValueError, KeyError) as err:
            last = err
            log.debug("no local processor settings in %s: %s", source, err)
    name = hf_name(arch)
    if name in table:
        return table[name].build_processor(), f"published settings of {name} (dfew_mm table)"
    raise ConfigError(
        f"{key}.arch={arch}: no preprocessor_config.json found offline ({last}); the built-in table covers "
        f"{', '.join(sorted(table))}. " + files_advice(arch, key, name))


def load_hf_model(arch: str, checkpoint: str, key: str):
    """The pretrained Hugging Face model of the loading step, with offline advice when it cannot be had."""
    from transformers import AutoModel

    source = weights_source(arch, checkpoint)
    try:
        return AutoModel.from_pretrained(source), source
    except Exception as err:  # network errors, offline mode, missing files, gated repos: all mean "no weights"
        raise AssetError(f"could not load {arch} weights from '{source}' ({type(err).__name__}: {err}). "
                         + offline_advice(arch, key, source)) from err


def fetch_processor(source: str, kind: str):
    """The weights' own processor at loading time (may download), or None when the repo has none."""
    from transformers import AutoFeatureExtractor, AutoImageProcessor

    auto = AutoImageProcessor if kind == "image" else AutoFeatureExtractor
    try:
        return auto.from_pretrained(source)
    except Exception as err:  # noqa: BLE001 - a repo without processor files keeps the build-time settings
        log.warning("%s: no processor settings could be read (%s); keeping the build-time ones", source, err)
        return None


def check_published_config(config, loaded, arch: str, table: dict[str, Published], overridden) -> None:
    """A model built from the published table must match the checkpoint's own config on every listed key."""
    name = hf_name(arch)
    if name not in table:
        return
    diff = [f"{k}: table {table[name].config[k]!r}, checkpoint {getattr(loaded, k, None)!r}"
            for k in table[name].config if k not in overridden and getattr(loaded, k, None) != getattr(config, k)]
    if diff:
        raise AssetError(f"the published settings of {name} in dfew_mm differ from the downloaded config "
                         f"({'; '.join(diff)}); the cache now holds the checkpoint's own config, which the next "
                         "build uses: run again")
