"""Encoders, fusion and the assembled model: shapes, gradients, masks, weight loading, registry."""

from __future__ import annotations

import itertools

import pytest
import torch
import torchvision

from dfew_mm.config import ModelConfig, load_config
from dfew_mm.datasets.dfew import NUM_CLASSES
from dfew_mm.errors import AssetError, ConfigError
from dfew_mm.models import build_model, load_pretrained, resolve_modalities
from dfew_mm.models.backbones.ast import ast_config, fit_position_embeddings
from dfew_mm.models.encoders.audio import AudioEncoder
from dfew_mm.models.encoders.pose import PoseEncoder, normalise_pose
from dfew_mm.models.encoders.video import VideoEncoder
from dfew_mm.models.fusion import time_embedding

B, T, S, F = 3, 4, 32, 150
SUBSETS = [list(c) for r in (1, 2, 3) for c in itertools.combinations(("video", "pose", "audio"), r)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


AST = {"model.audio.arch": "ast", "model.audio.num_layers": 2}  # tiny's earlier audio transformer


def small_model_config(modalities=("video", "pose", "audio"), **over) -> ModelConfig:
    overrides = [f"model.modalities=[{','.join(modalities)}]", "model.audio.max_length=160", "data.audio_frames=150",
                 "model.video.input_size=0", *[f"{k}={v}" for k, v in over.items()]]
    return load_config("tiny", overrides).model


def make_batch(b: int = B, silent_last: bool = True) -> dict:
    g = torch.Generator().manual_seed(0)
    audio_mask = torch.ones(b, F, dtype=torch.bool)
    audio_mask[:, 120:] = False  # padding at the end
    if silent_last:
        audio_mask[-1] = False  # a clip without audio
    video_mask = torch.ones(b, T, dtype=torch.bool)
    video_mask[0, 1] = False
    return {
        "video": torch.randint(0, 256, (b, T, 3, S, S), dtype=torch.uint8, generator=g),
        "video_mask": video_mask,
        "pose": torch.rand(b, T, 33, 4, generator=g),
        "pose_mask": torch.ones(b, T, dtype=torch.bool),
        "audio": torch.randn(b, F, 128, generator=g) * 4 - 4,
        "audio_mask": audio_mask,
        "audio_start": torch.zeros(b),
        "frame_time": torch.linspace(0.1, 1.9, T).expand(b, -1).contiguous(),
        "label": torch.arange(b) % NUM_CLASSES,
        "clip_id": [str(i) for i in range(b)],
    }


def assert_all_trainable_have_grads(module: torch.nn.Module) -> None:
    missing = [n for n, p in module.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, f"no gradient reached {missing[:5]}"
    bad = [n for n, p in module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients in {bad[:5]}"


# -- encoders -----------------------------------------------------------------------------------
def test_video_encoder_shapes_and_gradients():
    enc = VideoEncoder(small_model_config().video)
    out = enc(make_batch(2)["video"])
    assert out.shape == (2, T, 512) == (2, T, enc.output_dim)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert_all_trainable_have_grads(enc)


@pytest.mark.parametrize("arch,dim", [("resnet34", 512), ("resnet50", 2048)])
def test_larger_video_backbones_give_their_feature_size(arch, dim):
    enc = VideoEncoder(small_model_config(**{"model.video.arch": arch}).video).eval()
    with torch.no_grad():
        assert enc(make_batch(1)["video"]).shape == (1, T, dim) == (1, T, enc.output_dim)


def test_video_encoder_resizes_inside_and_normalises_uint8():
    cfg = small_model_config(**{"model.video.input_size": 24}).video
    enc = VideoEncoder(cfg).eval()
    seen = []
    enc.backbone.conv1.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape))
    with torch.no_grad():
        assert enc(make_batch(2)["video"]).shape == (2, T, 512)
    assert seen == [(2 * T, 3, 24, 24)]  # the backbone sees 24 px faces, not the stored 32 px
    white = torch.full((1, 1, 3, S, S), 255, dtype=torch.uint8)
    x = (white.flatten(0, 1).float() - enc.mean) / enc.std
    assert torch.allclose(x[0, :, 0, 0], (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]))


@pytest.mark.parametrize("normalise,max_change,min_change", [("per_image", 0.05, 0.0), ("imagenet", 1.0, 0.2)])
def test_per_image_normalisation_ignores_exposure_imagenet_does_not(normalise, max_change, min_change):
    torch.manual_seed(0)
    enc = VideoEncoder(small_model_config(**{"model.video.normalise": normalise}).video).eval()
    video = make_batch(2)["video"] // 2 * 2  # even grey levels, so halving the exposure is exact
    with torch.no_grad():
        bright, dark, blank = enc(video), enc(video // 2), enc(torch.zeros_like(video))
    change = ((dark - bright).norm() / bright.norm()).item()  # relative change of the features
    assert min_change <= change <= max_change
    assert torch.isfinite(blank).all()


def test_unknown_video_normalisation_is_rejected():
    with pytest.raises(ConfigError, match="model.video.normalise"):
        small_model_config(**{"model.video.normalise": "minmax"})


@pytest.mark.parametrize("freeze,trainable_prefixes", [("all", ()), ("all_but_last", ("backbone.layer4",)),
                                                       ("none", ("backbone.conv1", "backbone.layer4"))])
def test_video_freeze_policies(freeze, trainable_prefixes):
    enc = VideoEncoder(small_model_config(**{"model.video.freeze": freeze}).video)
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    for prefix in trainable_prefixes:
        assert any(n.startswith(prefix) for n in trainable)
    if freeze == "all":
        assert not trainable
    if freeze == "all_but_last":
        assert all(n.startswith("backbone.layer4") for n in trainable)
        enc.train()
        assert not enc.backbone.bn1.training and enc.backbone.layer4.training  # frozen BN keeps its statistics


def test_pose_normalisation_centres_on_shoulders_and_scales_by_width():
    pose = torch.rand(2, T, 33, 4)
    pose[..., 11, :2] = torch.tensor([0.6, 0.4])  # left shoulder
    pose[..., 12, :2] = torch.tensor([0.4, 0.4])  # right shoulder, width 0.2
    pose[..., 0, :2] = torch.tensor([0.5, 0.2])  # nose above the centre
    out = normalise_pose(pose)
    assert torch.allclose(out[..., 11, :2], torch.tensor([0.5, 0.0]), atol=1e-5)
    assert torch.allclose(out[..., 0, :2], torch.tensor([0.0, -1.0]), atol=1e-5)
    assert torch.equal(out[..., 3], pose[..., 3])  # visibility passes through
    assert torch.isfinite(normalise_pose(torch.zeros(1, 1, 33, 4))).all()  # degenerate frame stays finite


def test_pose_encoder_shapes_and_gradients():
    enc = PoseEncoder(small_model_config().pose)
    out = enc(make_batch()["pose"])
    assert out.shape == (B, T, enc.output_dim)
    out.mean().backward()
    assert_all_trainable_have_grads(enc)


def test_audio_encoder_tokens_masks_and_timestamps():
    cfg = small_model_config().audio  # max_length 160 frames = 1.6 s, 4 tokens/s
    enc = AudioEncoder(cfg)
    batch = make_batch()
    tokens, mask, times = enc(batch["audio"], batch["audio_mask"], torch.tensor([0.0, 0.5, 0.0]))
    n = round(1.6 * cfg.tokens_per_second)
    assert tokens.shape == (B, n, cfg.hidden_size) and mask.shape == times.shape == (B, n)
    assert torch.allclose(times[0], (torch.arange(n) + 0.5) * 1.6 / n)  # token centres, seconds
    assert torch.allclose(times[1], times[0] + 0.5)  # a crop starting at 0.5 s shifts the timestamps
    # 120 real frames of 160: tokens 0-4 are at least half covered, the last is padding; last clip silent
    assert mask[0, :5].all() and not mask[0, 5] and not mask[-1].any()
    tokens.mean().backward()
    assert_all_trainable_have_grads(enc)


def test_ast_position_embeddings_are_cropped_or_interpolated():
    pos = torch.randn(1, 2 + 12 * 101, 8)  # an AudioSet checkpoint: 1024 frames -> 101 time patches
    cropped = fit_position_embeddings(pos, 12, 50)
    assert cropped.shape == (1, 2 + 12 * 50, 8)
    assert torch.equal(cropped[:, 2:].view(12, 50, 8), pos[:, 2:].view(12, 101, 8)[:, :50])
    assert fit_position_embeddings(pos, 12, 150).shape == (1, 2 + 12 * 150, 8)


def test_audio_weights_load_from_a_local_checkpoint(tmp_path):
    from transformers import ASTModel

    cfg = small_model_config(**AST).audio
    long_cfg = ast_config(cfg)
    long_cfg.max_length = 1024  # like the AudioSet checkpoint
    ASTModel(long_cfg).save_pretrained(tmp_path / "ast")
    source = ASTModel.from_pretrained(tmp_path / "ast")
    cfg.pretrained, cfg.checkpoint = True, str(tmp_path / "ast")
    enc = AudioEncoder(cfg)
    enc.load_pretrained(cfg)
    loaded, expected = enc.backbone.model.state_dict(), source.state_dict()
    pos = "embeddings.position_embeddings"
    assert all(torch.equal(loaded[k], expected[k]) for k in expected if k != pos)
    assert loaded[pos].shape[1] == 2 + 12 * enc.backbone.n_time < expected[pos].shape[1]
    cfg.hidden_size = 32  # architecture that does not fit the checkpoint
    with pytest.raises(AssetError, match="does not fit"):
        AudioEncoder(cfg).load_pretrained(cfg)


def test_audio_download_failure_says_how_to_work_offline(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # fail fast, like a machine offline
    cfg = small_model_config(**AST).audio
    cfg.pretrained, cfg.checkpoint = True, "no-such-org/no-such-ast-model"
    with pytest.raises(AssetError, match="pretrained=false"):
        AudioEncoder(cfg).load_pretrained(cfg)


def test_face_checkpoint_loads_strictly(tmp_path):
    source = torchvision.models.resnet18(weights=None)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}  # DataParallel-saved classifier
    torch.save({"state_dict": state}, tmp_path / "face_r18.pth")
    cfg = small_model_config(**{"model.video.checkpoint": str(tmp_path / "face_r18.pth")}).video
    enc = VideoEncoder(cfg)
    enc.load_pretrained(cfg)
    assert torch.equal(enc.backbone.conv1.weight, source.conv1.weight)
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    cfg.checkpoint = str(tmp_path / "r34.pth")
    with pytest.raises(AssetError, match="does not fit a torchvision resnet18"):
        VideoEncoder(cfg).load_pretrained(cfg)
    cfg.checkpoint = str(tmp_path / "absent.pth")
    with pytest.raises(AssetError, match="does not exist"):
        VideoEncoder(cfg).load_pretrained(cfg)


# -- fusion and the assembled model -----------------------------------------------------------------
def test_time_embedding_is_a_function_of_seconds():
    t = torch.tensor([[0.0, 0.5, 0.5]])
    emb = time_embedding(t, 64)
    assert emb.shape == (1, 3, 64)
    assert torch.equal(emb[0, 1], emb[0, 2]) and not torch.equal(emb[0, 0], emb[0, 1])


@pytest.mark.parametrize("modalities", SUBSETS, ids=lambda m: "+".join(m))
def test_every_modality_subset_trains_and_evaluates(modalities):
    model = build_model(small_model_config(modalities))
    model.train()
    batch = make_batch()
    logits = model(batch)
    assert logits.shape == (B, NUM_CLASSES) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, batch["label"]).backward()
    assert_all_trainable_have_grads(model)
    model.eval()
    with torch.no_grad():
        for r in range(1, len(modalities) + 1):
            for subset in itertools.combinations(modalities, r):
                out = model(batch, modalities=list(subset))
                assert out.shape == (B, NUM_CLASSES) and torch.isfinite(out).all()


def test_absent_modalities_do_not_influence_the_output():
    model = build_model(small_model_config(("pose", "audio"))).eval()
    batch, other = make_batch(), make_batch()
    other["audio"] = torch.randn_like(other["audio"])
    with torch.no_grad():
        assert torch.allclose(model(batch, ["pose"]), model(other, ["pose"]))
        assert not torch.allclose(model(batch), model(other))


def test_modality_dropout_and_arcface_head_stay_finite():
    model = build_model(small_model_config(**{"model.fusion.head": "arcface"}))
    model.modality_dropout = 0.9
    model.train()
    keep = model._drop_mask(64, torch.device("cpu"))
    assert keep.any(1).all() and not keep.all()
    batch = make_batch()
    logits = model(batch)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, batch["label"]).backward()
    model.eval()
    with torch.no_grad():
        cos = model(batch) / model.cfg.fusion.arcface_scale
    assert cos.abs().max() <= 1 + 1e-5


def test_untrained_modality_is_rejected():
    model = build_model(small_model_config(("pose",))).eval()
    with pytest.raises(ValueError, match="were not trained"):
        model(make_batch(), modalities=["audio"])


def test_registry_rejects_empty_and_unknown_modalities():
    assert resolve_modalities("audio,video") == ["video", "audio"]
    with pytest.raises(ConfigError, match="non-empty"):
        resolve_modalities("")
    with pytest.raises(ConfigError, match="valid modalities are video, pose, audio"):
        resolve_modalities(["video", "lidar"])
    with pytest.raises(ConfigError, match="empty"):
        load_config("tiny", ["model.modalities=[]"])


def test_build_model_never_downloads_and_load_pretrained_is_separate(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = load_config("default").model  # pretrained ResNet-18 and AST: built with random weights
    model = build_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 80_000_000
    cfg = small_model_config(("pose",))  # pose has no pretrained weights: loading changes nothing
    model = build_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert load_pretrained(model, cfg) is model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
