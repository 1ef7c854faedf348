"""Backbones by name: every family built offline from a tiny random config, forward and backward, freezing
and LoRA, strict loading, preprocessing against the Hugging Face / timm processors, errors that say what to do."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from _tiny_backbones import S, SECONDS, SPEECH, SR, SSL, TRANSFORMERS_A, TRANSFORMERS_V, VISION, audio_cfg, video_cfg
from dfew_mm.config import ModelConfig, load_config
from dfew_mm.data.store import CLIP_ARRAYS
from dfew_mm.errors import AssetError, ConfigError, StoreError
from dfew_mm.models import build_model
from dfew_mm.models.backbones import speech_spec, vision_spec
from dfew_mm.models.backbones.base import is_adapter
from dfew_mm.models.encoders import check_store_fits, store_fit_problems
from dfew_mm.models.encoders.audio import AudioEncoder, AudioEncoderConfig
from dfew_mm.models.encoders.video import VideoEncoder, VideoEncoderConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread", "hub_offline")


def faces(b: int = 2, t: int = 3, size: int = S, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, 3, size, size), dtype=torch.uint8, generator=g)  # (B, T, 3, S, S)


def speech_batch(b: int = 3, seed: int = 0) -> dict:
    """Both audio inputs of the batch contract: the filterbank and the 16 kHz waveform, with masks."""
    g = torch.Generator().manual_seed(seed)
    n, f = round(SECONDS * SR), round(SECONDS * 100)
    wave_mask = torch.ones(b, n, dtype=torch.bool)
    wave_mask[0, round(1.2 * SR):] = False  # clip 0 ends after 1.2 s: its last token is padding
    wave_mask[-1] = False  # the last clip has no audio
    fbank_mask = torch.ones(b, f, dtype=torch.bool)
    fbank_mask[0, 120:] = False
    fbank_mask[-1] = False
    return {"waveform": torch.randn(b, n, generator=g).clamp(-3, 3) / 3 * wave_mask,
            "waveform_mask": wave_mask,
            "audio": torch.randn(b, f, 128, generator=g) * 4 - 4, "audio_mask": fbank_mask,
            "audio_start": torch.tensor([0.0, 0.5, 0.0][:b])}


def assert_grads_match_trainability(module: torch.nn.Module) -> None:
    """Every trainable parameter got a finite, non-zero gradient; no frozen one got any."""
    missing = [n for n, p in module.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, f"no gradient reached {missing[:5]} ({len(missing)})"
    leaked = [n for n, p in module.named_parameters() if not p.requires_grad and p.grad is not None]
    assert not leaked, f"frozen parameters got gradients: {leaked[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)


def trainable(module: torch.nn.Module) -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad}


# -- every family builds offline, runs forward and backward -----------------------------------------
@pytest.mark.parametrize("name", VISION)
def test_vision_family_builds_offline_and_trains(name):
    enc = VideoEncoder(video_cfg(name)).train()
    out = enc(faces())
    assert out.shape == (2, 3, enc.output_dim) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert_grads_match_trainability(enc)
    frozen = {n for n, _ in enc.named_parameters()} - trainable(enc)  # freeze=none: all but unused tokens train
    assert all(n.endswith("mask_token") for n in frozen)


@pytest.mark.parametrize("name", SPEECH)
def test_speech_family_builds_offline_and_gives_timestamped_tokens(name):
    enc = AudioEncoder(audio_cfg(name)).train()
    batch = speech_batch()
    tokens, mask, times = enc.tokens(batch)
    n = round(SECONDS * 4)  # 4 tokens per second
    assert tokens.shape == (3, n, enc.output_dim) and mask.shape == times.shape == (3, n)
    assert torch.isfinite(tokens).all()  # also for the clip without audio
    assert torch.allclose(times[0], (torch.arange(n) + 0.5) * SECONDS / n)  # token centres, seconds
    assert torch.allclose(times[1], times[0] + 0.5)  # a crop that starts at 0.5 s shifts them
    assert mask[0, :4].all() and not mask[0, -1] and mask[1].all() and not mask[2].any()
    assert enc.input_keys == (("audio", "audio_mask") if name in ("ast", "fbank_cnn") else ("waveform", "waveform_mask"))
    (tokens * mask.unsqueeze(-1)).square().mean().backward()
    assert_grads_match_trainability(enc)


def test_waveform_encoders_ignore_padding_and_a_filterbank_batch_is_refused():
    enc = AudioEncoder(audio_cfg("hubert")).eval()
    batch = speech_batch()
    other = {**batch, "waveform": batch["waveform"] + 5.0 * ~batch["waveform_mask"]}  # garbage after the clip end
    with torch.no_grad():
        a, mask, _ = enc.tokens(batch)
        b, _, _ = enc.tokens(other)
    assert torch.allclose(a[mask], b[mask], atol=1e-5)
    with pytest.raises(ValueError, match="waveform"):
        enc(batch["audio"], batch["audio_mask"])
    with pytest.raises(KeyError, match="waveform"):
        enc.tokens({k: v for k, v in batch.items() if not k.startswith("waveform")})


@pytest.mark.parametrize("name", ["clip", "siglip", "dinov2", "timm_vit"])
def test_vision_transformers_run_at_another_input_size(name):
    enc = VideoEncoder(video_cfg(name, input_size=48, arch_kwargs={**VISION[name].get("arch_kwargs", {})})).eval()
    seen = []
    enc.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[-1]))
    with torch.no_grad():
        assert torch.isfinite(enc(faces(1, 2))).all()
    assert seen == [48]  # position embeddings interpolated (HF) or built for 48 px (timm)


# -- freezing and LoRA --------------------------------------------------------------------------------
def _encoder(kind: str, name: str, **over):
    return VideoEncoder(video_cfg(name, **over)) if kind == "video" else AudioEncoder(audio_cfg(name, **over))


def _backward(enc) -> None:
    enc.train()
    if isinstance(enc, VideoEncoder):
        enc(faces()).square().mean().backward()
    else:
        tokens, mask, _ = enc.tokens(speech_batch())
        (tokens * mask.unsqueeze(-1)).square().mean().backward()


FAMILIES = [("video", n) for n in VISION] + [("audio", n) for n in SPEECH]


@pytest.mark.parametrize("kind,name", FAMILIES, ids=lambda v: v)
def test_freeze_all_and_last_blocks(kind, name):
    frozen = _encoder(kind, name, freeze="all")
    assert not trainable(frozen)
    enc = _encoder(kind, name, freeze="last_blocks", trainable_blocks=1)
    blocks = enc.backbone.blocks()
    assert len(blocks) >= 2 and all(p.requires_grad for p in blocks[-1].parameters())
    assert not any(p.requires_grad for block in blocks[:-1] for p in block.parameters())
    first, params = next(blocks[0].parameters()), list(enc.backbone.parameters())
    stem = params[:next(i for i, p in enumerate(params) if p is first)]
    assert stem and not any(p.requires_grad for p in stem)  # embeddings / stem before the blocks stay frozen
    _backward(enc)
    assert_grads_match_trainability(enc)
    two = _encoder(kind, name, freeze="last_blocks", trainable_blocks=2)
    assert trainable(enc) < trainable(two) < {n for n, _ in two.named_parameters()}


@pytest.mark.parametrize("kind,name", [("video", n) for n in TRANSFORMERS_V] + [("audio", n) for n in TRANSFORMERS_A],
                         ids=lambda v: v)
def test_lora_trains_only_the_adapters(kind, name):
    enc = _encoder(kind, name, freeze="lora", lora_rank=4)
    names = trainable(enc)
    assert names and all(is_adapter(n) for n in names)
    total = sum(p.numel() for p in enc.parameters())
    adapters = sum(p.numel() for n, p in enc.named_parameters() if is_adapter(n))
    assert 0 < adapters < 0.5 * total
    with torch.no_grad():  # adapters start as a no-op; give them weight so that gradients reach both factors
        for n, p in enc.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    _backward(enc)
    assert_grads_match_trainability(enc)


def test_legacy_all_but_last_is_one_last_block_and_lora_needs_targets_on_resnet():
    old = VideoEncoder(video_cfg("resnet18", freeze="all_but_last"))
    new = VideoEncoder(video_cfg("resnet18", freeze="last_blocks", trainable_blocks=1))
    assert trainable(old) == trainable(new) and all(n.startswith("backbone.layer4.") for n in trainable(new))
    with pytest.raises(ConfigError, match="lora_targets"):
        VideoEncoder(video_cfg("resnet18", freeze="lora"))
    conv = VideoEncoder(video_cfg("resnet18", freeze="lora", lora_targets=["conv2"]))
    assert trainable(conv) and all(is_adapter(n) for n in trainable(conv))
    with pytest.raises(ConfigError, match="do not name modules"):
        VideoEncoder(video_cfg("clip", freeze="lora", lora_targets=["no_such_layer"]))
    with pytest.raises(ConfigError, match="trainable_blocks=9"):
        VideoEncoder(video_cfg("clip", freeze="last_blocks", trainable_blocks=9))


def test_frozen_batchnorm_keeps_its_statistics_in_training():
    enc = VideoEncoder(video_cfg("timm_efficientnet", freeze="last_blocks")).train()
    assert not enc.backbone.model.bn1.training and enc.backbone.model.bn2.training
    before = enc.backbone.model.bn1.running_mean.clone()
    enc(faces())
    assert torch.equal(before, enc.backbone.model.bn1.running_mean)


def test_lora_adapters_are_saved_and_restored_exactly():
    """As best.pt / last.pt and --resume do: state_dict out, a model rebuilt from the config, strict load."""
    cfg = ModelConfig(modalities=["video", "audio"], video=video_cfg("clip", freeze="lora", lora_rank=4),
                      audio=audio_cfg("whisper", freeze="lora", lora_rank=2))
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if is_adapter(n):
                p.normal_(0, 0.05)
    state = model.state_dict()
    adapter_keys = [k for k in state if is_adapter(k)]
    assert any(k.startswith("encoders.video.backbone.") for k in adapter_keys)
    assert any(k.startswith("encoders.audio.backbone.") for k in adapter_keys)
    torch.manual_seed(1)
    rebuilt = build_model(cfg)
    assert not torch.equal(rebuilt.state_dict()[adapter_keys[0]], state[adapter_keys[0]])
    rebuilt.load_state_dict(state, strict=True)
    batch = {**speech_batch(2), "video": faces(2, 3), "video_mask": torch.ones(2, 3, dtype=torch.bool),
             "frame_time": torch.linspace(0.1, 1.5, 3).expand(2, -1)}
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        for m in ("video", "audio"):
            a, b = model.encoders[m].tokens(batch)[0], rebuilt.encoders[m].tokens(batch)[0]
            assert torch.equal(a, b)


# -- loading: strict keys, local folders, offline advice ---------------------------------------------
def test_old_checkpoint_keys_keep_loading():
    model = build_model(ModelConfig(modalities=["video", "audio"], video=video_cfg("resnet18"),
                                    audio=audio_cfg("ast")))
    state = model.state_dict()
    assert "encoders.video.backbone.conv1.weight" in state and "encoders.video.backbone.layer4.1.bn2.weight" in state
    legacy = {k.replace("encoders.audio.backbone.model.", "encoders.audio.ast."): v for k, v in state.items()}
    assert "encoders.audio.ast.embeddings.cls_token" in legacy  # an AST checkpoint from before the registry
    build_model(model.cfg).load_state_dict(legacy, strict=True)


def test_hf_vision_builds_from_a_local_folder_and_loads_its_tower_strictly(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = tmp_path / "clip"
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=S,
                  patch_size=8)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=99,
                bos_token_id=0, eos_token_id=1, pad_token_id=1)
    source = CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=16))
    source.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": S}, crop_size={"height": S, "width": S}).save_pretrained(folder)
    cfg = VideoEncoderConfig(arch=f"hf/{folder}", pretrained=True, freeze="lora", lora_rank=2)
    enc = VideoEncoder(cfg)  # config and processor from the folder; the text tower is not built
    assert enc.spec.size == S and enc.output_dim == 32 and str(folder) in enc.spec.source
    assert not any("text" in n for n, _ in enc.named_parameters())
    enc.load_pretrained()
    wrapped = enc.backbone.model.encoder.layers[0].self_attn.q_proj
    assert torch.equal(wrapped.base_layer.weight, source.vision_model.encoder.layers[0].self_attn.q_proj.weight)
    assert torch.equal(enc.backbone.model.post_layernorm.weight, source.vision_model.post_layernorm.weight)
    bigger = VideoEncoderConfig(arch=f"hf/{folder}", arch_kwargs={"intermediate_size": 128})
    with pytest.raises(AssetError, match="does not fit.*shape mismatch"):
        VideoEncoder(bigger).load_pretrained()


def test_speech_encoders_load_local_folders_strictly(tmp_path):
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor, WhisperConfig, WhisperModel

    hubert = HubertModel(HubertConfig(**SSL))
    hubert.save_pretrained(tmp_path / "hubert")
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(tmp_path / "hubert")
    enc = AudioEncoder(AudioEncoderConfig(arch=f"hf/{tmp_path / 'hubert'}", max_length=160))
    assert enc.spec.do_normalize and enc.spec.return_attention_mask
    enc.load_pretrained()
    assert torch.equal(enc.backbone.model.encoder.layers[1].attention.v_proj.weight,
                       hubert.encoder.layers[1].attention.v_proj.weight)
    whisper = WhisperModel(WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                                         decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                                         vocab_size=99, pad_token_id=1, bos_token_id=0, eos_token_id=1,
                                         decoder_start_token_id=0))
    whisper.save_pretrained(tmp_path / "whisper")
    cfg = audio_cfg("whisper", pretrained=True, checkpoint=str(tmp_path / "whisper"), arch_kwargs={})
    enc = AudioEncoder(cfg)  # config from the checkpoint folder, extractor settings from the published table
    enc.load_pretrained()
    assert torch.equal(enc.backbone.model.layers[1].fc1.weight, whisper.encoder.layers[1].fc1.weight)


def test_timm_face_checkpoint_loads_strictly_without_its_classifier(tmp_path):
    import timm

    source = timm.create_model("test_efficientnet", num_classes=8)  # an 8-class expression classifier
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "face.pt")
    cfg = video_cfg("timm_efficientnet", checkpoint=str(tmp_path / "face.pt"))
    enc = VideoEncoder(cfg)
    enc.load_pretrained()
    assert torch.equal(enc.backbone.model.conv_stem.weight, source.conv_stem.weight)
    torch.save(source, tmp_path / "pickled.pt")  # a whole pickled model, as HSEmotion ships them
    with pytest.raises(AssetError, match="state_dict"):
        VideoEncoder(dataclasses.replace(cfg, checkpoint=str(tmp_path / "pickled.pt"))).load_pretrained()
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), tmp_path / "vit.pt")
    with pytest.raises(AssetError, match="does not fit timm test_efficientnet"):
        VideoEncoder(dataclasses.replace(cfg, checkpoint=str(tmp_path / "vit.pt"))).load_pretrained()


@pytest.mark.parametrize("kind,name", [("video", "clip"), ("video", "dinov2"), ("audio", "wavlm"), ("audio", "whisper"),
                                       ("audio", "ast")], ids=lambda v: v)
def test_failed_download_says_how_to_work_offline(kind, name):
    enc = _encoder(kind, name)
    cfg = dataclasses.replace(enc.cfg, pretrained=True)
    with pytest.raises(AssetError) as err:
        enc.load_pretrained(cfg)
    message = str(err.value)
    for hint in ("--local-dir", f"model.{kind}.checkpoint=DIR", "HF_HUB_OFFLINE=1", f"model.{kind}.pretrained=false"):
        assert hint in message


def test_failed_timm_download_says_how_to_work_offline():
    enc = VideoEncoder(video_cfg("timm_vit"))
    with pytest.raises(AssetError, match=r"huggingface-cli download .*model.video.checkpoint=DIR.*pretrained=false"):
        enc.load_pretrained(dataclasses.replace(enc.cfg, pretrained=True))


def test_unknown_hf_model_offline_says_how_to_get_it():
    advice = r"(?s)no config found offline.*--local-dir DIR.*checkpoint=DIR.*HF_HUB_OFFLINE"
    with pytest.raises(ConfigError, match=advice):
        VideoEncoder(VideoEncoderConfig(arch="hf/no-such-org/no-such-model"))


# -- names -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("override,expected", [
    ("model.video.arch=vgg16", ["resnet18, resnet34, resnet50", "timm/<model name>", "hf/openai/clip-vit-base-patch16",
                                "hf/google/siglip-base-patch16-224", "hf/facebook/dinov2-base"]),
    ("model.video.arch=timm/", ["timm/tf_efficientnet_b0.ns_jft_in1k"]),
    ("model.audio.arch=wav2vec", ["ast", "hf/microsoft/wavlm-base-plus", "hf/facebook/hubert-base-ls960",
                                  "hf/openai/whisper-base"]),
    ("model.video.freeze=partial", ["none, all, last_blocks, lora"]),
])
def test_unknown_names_list_the_families_and_examples(override, expected, capsys):
    """Checked when a config is loaded (each modality checks its section), where a model is built from a
    config made in code, and by the command line before any data is touched."""
    from dfew_mm.cli import main
    from dfew_mm.models import build_model

    with pytest.raises(ConfigError) as err:
        load_config("tiny", [override])
    key, value = override.split("=")
    section, name = key.split(".")[1:]
    model = load_config("tiny").model
    bad = dataclasses.replace(model, **{section: dataclasses.replace(getattr(model, section), **{name: value})})
    with pytest.raises(ConfigError) as built:
        build_model(bad)
    assert str(built.value) == str(err.value)
    assert main(["train", "--config", "tiny", "--store", "/nonexistent", override]) == 2
    assert str(err.value) in capsys.readouterr().err  # before the missing store is noticed
    for text in expected:
        assert text in str(err.value)


def test_unknown_timm_model_and_unsupported_hf_model_type_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="timm has no model 'no_such_net'"):
        VideoEncoder(VideoEncoderConfig(arch="timm/no_such_net"))
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match="'bert' model.*clip_vision_model"):
        VideoEncoder(VideoEncoderConfig(arch=f"hf/{tmp_path / 'bert'}"))
    with pytest.raises(ConfigError, match="'bert' model.*wavlm"):
        AudioEncoder(AudioEncoderConfig(arch=f"hf/{tmp_path / 'bert'}"))
    with pytest.raises(ConfigError, match="arch_kwargs.no_such_key"):
        VideoEncoder(video_cfg("clip", arch_kwargs={"no_such_key": 1}))


# -- preprocessing equals the backbones' own processors ------------------------------------------------
def face_crop(size: int = 112) -> np.ndarray:
    """A smooth face-like image with sensor noise, (S, S, 3) uint8."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([128 + 100 * np.sin(6 * xx + 3 * yy), 128 + 90 * np.cos(5 * yy), 100 + 80 * xx * yy], -1)
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


# Each checkpoint's preprocessor_config.json as published on the Hugging Face hub.
PROCESSORS = {
    "hf/openai/clip-vit-base-patch16": ("CLIPImageProcessor", dict(
        crop_size=224, do_center_crop=True, do_normalize=True, do_resize=True, resample=3, size=224,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])),
    "hf/google/siglip-base-patch16-224": ("SiglipImageProcessor", dict(
        do_normalize=True, do_rescale=True, do_resize=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        resample=3, rescale_factor=0.00392156862745098, size={"height": 224, "width": 224})),
    "hf/facebook/dinov2-base": ("BitImageProcessor", dict(
        crop_size={"height": 224, "width": 224}, do_center_crop=True, do_convert_rgb=True, do_normalize=True,
        do_rescale=True, do_resize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        resample=3, rescale_factor=0.00392156862745098, size={"shortest_edge": 256})),
}


@pytest.mark.parametrize("arch", PROCESSORS)
@pytest.mark.parametrize("backend", ["", "Pil"], ids=["torchvision", "pil"])
def test_face_preprocessing_matches_the_hf_image_processor(arch, backend):
    import transformers

    class_name, settings = PROCESSORS[arch]
    processor = getattr(transformers, class_name + backend)(**settings)
    name = next(n for n, v in VISION.items() if v["arch"] == arch)
    enc = VideoEncoder(video_cfg(name, input_size=0))  # tiny weights, the checkpoint's own preprocessing
    img = face_crop()
    ours = enc.preprocess(torch.from_numpy(img).permute(2, 0, 1)[None, None])  # (1, 3, 224, 224)
    theirs = processor(images=[img], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (1, 3, 224, 224)
    levels = (ours - theirs).abs() * torch.tensor(settings["image_std"]).view(1, 3, 1, 1) * 255  # grey levels
    assert levels.max() <= 1.0 + 1e-3  # at most one grey level (rounding ties of the 8-bit resize) ...
    assert (levels > 0.5).float().mean() < 0.02  # ... on under 2% of the values


def test_timm_preprocessing_matches_timm_eval_transform():
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    enc = VideoEncoder(video_cfg("timm_efficientnet", input_size=0))  # 160 px input, crop_pct 0.95, bicubic
    img = face_crop(128)
    ours = enc.preprocess(torch.from_numpy(img).permute(2, 0, 1)[None, None])
    transform = create_transform(**resolve_data_config(model=enc.backbone.model))
    theirs = transform(Image.fromarray(img)).unsqueeze(0)
    assert ours.shape == theirs.shape == (1, 3, 160, 160)
    levels = (ours - theirs).abs() * torch.tensor(enc.spec.std).view(1, 3, 1, 1) * 255
    assert levels.max() <= 2.0 + 1e-3 and (levels > 0.5).float().mean() < 0.05  # PIL's fixed-point resampling


def test_published_settings_match_the_processor_files():
    import transformers

    for arch, (class_name, settings) in PROCESSORS.items():
        from dfew_mm.models.backbones.hf_vision import spec_from_processor

        published = vision_spec(VideoEncoderConfig(arch=arch))
        assert published.settings() == spec_from_processor(getattr(transformers, class_name)(**settings), "").settings()
    clip = vision_spec(VideoEncoderConfig(arch="hf/openai/clip-vit-base-patch16"))
    assert (clip.size, clip.resize, clip.interpolation) == (224, 224, "bicubic") and "table" in clip.source
    assert speech_spec(AudioEncoderConfig(arch="hf/microsoft/wavlm-base-plus")).do_normalize is False


def test_waveform_normalisation_matches_wav2vec2_feature_extractor():
    from transformers import Wav2Vec2FeatureExtractor

    from dfew_mm.models.backbones.wav2vec2 import normalise_waveform

    rng = np.random.default_rng(0)
    clips = [rng.normal(0.1, 0.3, 16_000).astype(np.float32), rng.normal(-0.05, 0.1, 9_000).astype(np.float32)]
    extractor = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    theirs = extractor(clips, sampling_rate=SR, padding=True, return_tensors="pt")
    wave = torch.zeros(2, 16_000)
    wave[0], wave[1, :9_000] = torch.from_numpy(clips[0]), torch.from_numpy(clips[1])
    mask = theirs["attention_mask"].bool()
    ours = normalise_waveform(wave, mask)
    assert (ours - theirs["input_values"]).abs().max() < 1e-4


def test_whisper_log_mel_matches_whisper_feature_extractor():
    from transformers import WhisperFeatureExtractor

    enc = AudioEncoder(audio_cfg("whisper"))
    rng = np.random.default_rng(0)
    t = np.arange(SR * 1.3) / SR
    loud = (0.3 * np.sin(2 * np.pi * 220 * t) * np.exp(-t) + rng.normal(0, 0.02, t.size)).astype(np.float32)
    quiet = (0.01 * rng.normal(0, 1, SR)).astype(np.float32)  # a different peak: the floor is per clip
    theirs = WhisperFeatureExtractor(feature_size=80)([loud, quiet], sampling_rate=SR,
                                                      return_tensors="pt")["input_features"]
    padded = torch.zeros(2, enc.backbone.n_samples)
    padded[0, :loud.size], padded[1, :quiet.size] = torch.from_numpy(loud), torch.from_numpy(quiet)
    ours = enc.backbone.log_mel(padded)
    assert ours.shape == theirs.shape == (2, 80, 3000)
    assert (ours - theirs).abs().max() < 1e-4


def test_ast_scaling_of_the_stored_filterbank_matches_ast_feature_extractor():
    from transformers import ASTFeatureExtractor

    from dfew_mm.extract.audio import log_mel_fbank

    enc = AudioEncoder(audio_cfg("ast"))
    rng = np.random.default_rng(0)
    clip = (0.2 * np.sin(np.arange(SR) * 0.05) + rng.normal(0, 0.05, SR)).astype(np.float32)
    theirs = ASTFeatureExtractor()(clip, sampling_rate=SR, return_tensors="pt")["input_values"][0]  # (1024, 128)
    fbank = torch.from_numpy(log_mel_fbank(clip).astype(np.float32))  # (98, 128) as stored (float16)
    ours = (fbank - enc.backbone.fbank_mean) / enc.backbone.fbank_scale
    assert (ours - theirs[:len(fbank)]).abs().max() < 2e-3  # float16 storage of the filterbank


# -- does the store fit the backbone ----------------------------------------------------------------
def test_store_fit_check_names_what_to_reextract():
    def model(video: str = "resnet18", audio: str = "ast", **video_over) -> ModelConfig:
        return ModelConfig(video=VideoEncoderConfig(arch=video, **video_over), audio=AudioEncoderConfig(arch=audio))

    stored = list(CLIP_ARRAYS)  # a store of format 1 (no waveform), extracted without --blendshapes
    check_store_fits(model(), 112, stored)  # ResNet at the stored size, AST on the filterbank
    with pytest.raises(StoreError) as err:
        check_store_fits(model("hf/openai/clip-vit-base-patch16", "hf/microsoft/wavlm-base-plus"), 112, stored)
    message = str(err.value)
    assert "--face-size 224" in message and "data.face_size=224" in message and "input_size=112" in message
    assert "'waveform' array" in message and "model.audio.arch=ast" in message
    assert not store_fit_problems(model("hf/openai/clip-vit-base-patch16", "hf/microsoft/wavlm-base-plus"), 224,
                                  [*stored, "waveform"])
    assert not store_fit_problems(model("hf/openai/clip-vit-base-patch16", input_size=112), 112, stored)
    dino = store_fit_problems(model("hf/facebook/dinov2-base"), 112, stored)
    assert len(dino) == 1 and "--face-size 256" in dino[0] and "input_size=98" in dino[0]
    assert not store_fit_problems(model("hf/facebook/dinov2-base"), 192, stored)  # 256 / 192 = 1.33x
    assert not store_fit_problems(dataclasses.replace(model("hf/openai/clip-vit-base-patch16"), modalities=["pose"]),
                                  112, stored)
    shapes = store_fit_problems(dataclasses.replace(model(), modalities=["pose", "blendshapes"]), 112, stored)
    assert len(shapes) == 1 and "'blendshapes' array" in shapes[0] and "--blendshapes" in shapes[0]
