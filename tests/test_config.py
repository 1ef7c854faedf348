"""Config composition: dataclass defaults -> YAML -> key=value overrides, and their errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dfew_mm.config import ExperimentConfig, from_dict, load_config, shipped_configs, to_dict, write_run_record
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


REPO = Path(__file__).resolve().parent.parent


def test_shipped_configs_load_and_list_only_what_differs_from_their_base():
    shipped = shipped_configs()
    assert set(shipped) == {p.stem for p in (REPO / "configs").glob("*.yaml")}  # every file ships
    assert {"default", "tiny", "ablation_frozen"} <= set(shipped)
    assert load_config("default") == ExperimentConfig()  # the schema defaults are the default experiment
    for name, source in shipped.items():
        load_config(name)
        text = yaml.safe_load(source.read_text()) or {}
        if name != "default":  # an experiment starts from default or from another shipped experiment
            assert text.get("base") in shipped, name
        base = load_config(text["base"]) if "base" in text else ExperimentConfig()
        # every value a file sets changes something: no restated defaults
        for section, values in text.items():
            if section == "base":
                continue
            flat = {f"{section}.{k}": v for k, v in _flatten(values).items()}
            for key, value in flat.items():
                current = _get(to_dict(base), key)
                assert current != value, f"{name}.yaml restates {key}={value!r} of its base"


def _flatten(values: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in values.items():
        out.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


def _get(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def test_base_chains_and_bad_files(tmp_path):
    (tmp_path / "parent.yaml").write_text("base: tiny\ntrain:\n  epochs: 3\n")
    (tmp_path / "child.yaml").write_text("base: parent.yaml\ntrain:\n  lr: 0.01\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.train.epochs == 3 and cfg.train.lr == 0.01 and cfg.model.video.input_size == 32  # from tiny
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "loop.yaml")
    for name, text in (("list.yaml", "- train\n- model\n"), ("scalar.yaml", "42\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match="must be a mapping"):
            load_config(tmp_path / name)
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    assert load_config(tmp_path / "empty.yaml") == ExperimentConfig()


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
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode != 0 or not (REPO / ".git").exists():
        pytest.skip("not running from a git checkout")
    assert env["git_sha"].removesuffix("-dirty") == head.stdout.strip() and env["torch"]


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
