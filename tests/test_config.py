"""Config composition: dataclass defaults -> YAML -> key=value overrides, and their errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from dfew_mm.config import CONFIG_DIR, ExperimentConfig, from_dict, load_config, to_dict, write_run_record
from dfew_mm.errors import ConfigError


def test_defaults_yaml_and_overrides_compose(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  epochs: 7\n  lr: 0.001\nmodel:\n  modalities: [video, pose]\n")
    cfg = load_config(path, ["train.epochs=3", "model.video.arch=resnet34", "data.fold=2"])
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.train.epochs == 3  # override beats YAML
    assert cfg.train.lr == 0.001  # YAML beats default
    assert cfg.train.batch_size == ExperimentConfig().train.batch_size  # default kept
    assert cfg.model.modalities == ["video", "pose"]
    assert cfg.model.video.arch == "resnet34" and cfg.data.fold == 2
    assert from_dict(to_dict(cfg)) == cfg


def test_shipped_configs_load():
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert {"default", "tiny"} <= set(names)
    for name in names:
        load_config(name)


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'train.epochz'.*train.epochs"):
        load_config(None, ["train.epochz=3"])
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  vidoe: {arch: resnet18}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'model.vidoe'.*model.video.arch"):
        load_config(path)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=many", "train.epochs"),
        ("model.modalities=[]", "modalities is empty"),
        ("model.modalities=[video,smell]", "valid modalities are video, pose, audio"),
        ("model.video.arch=vgg16", "resnet18, resnet34, resnet50"),
        ("data.fold=6", "folds 1..5"),
        ("train.epochs", "key=value"),
    ],
)
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_config_file_names_shipped_ones():
    with pytest.raises(ConfigError, match="shipped configs: .*tiny"):
        load_config("no_such_config")


def test_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_run_record_has_config_and_git_sha(tmp_path):
    cfg = load_config(None, ["train.epochs=2"])
    write_run_record(tmp_path / "run", cfg, ["dfew_mm", "train"])
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 2
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=CONFIG_DIR.parent, capture_output=True,
                         text=True).stdout.strip()
    assert env["git_sha"].startswith(sha) and env["torch"]


def test_cli_help_lists_subcommands():
    from dfew_mm.cli import COMMANDS

    out = subprocess.run([sys.executable, "-m", "dfew_mm.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert {"folds", "synth", "extract", "train", "cv", "evaluate", "predict", "demo"} <= set(COMMANDS)
    for command in COMMANDS:
        assert command in out
        sub = subprocess.run([sys.executable, "-m", "dfew_mm.cli", command, "--help"],
                             capture_output=True, text=True, check=True).stdout
        assert "examples:" in sub and f"dfew_mm {command}" in sub, command
