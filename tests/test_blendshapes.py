"""The blendshapes modality: FaceLandmarker expression scores respond to expression on real
footage (the DFEW and CREMA-D samples in ../shared), and a model trains on them as a fourth
modality beside video, pose and audio."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _train_stores import SMALL, make_store
from dfew_mm.cli import main
from dfew_mm.constants import BLENDSHAPE_NAMES, N_BLENDSHAPES
from dfew_mm.data.store import FeatureStore
from dfew_mm.errors import StoreError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DFEW = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
CREMAD = {"ANG": "1001_DFA_ANG_XX", "DIS": "1001_DFA_DIS_XX", "FEA": "1001_DFA_FEA_XX", "HAP": "1001_DFA_HAP_XX",
          "NEU": "1001_DFA_NEU_XX", "SAD": "1001_DFA_SAD_XX"}


@pytest.fixture(scope="module")
def scores(clips_dir, assets_dir):
    """Clip -> (T, 52) blendshape scores of the frames with a face, T=8, for the 13 labelled samples."""
    from dfew_mm.extract.options import ExtractOptions
    from dfew_mm.extract.worker import ClipExtractor, resolve_models

    options = ExtractOptions(blendshapes=True, frames=8)
    extractor = ClipExtractor(options, resolve_models(options, assets_dir))
    paths = {**{n: clips_dir / "dfew_samples" / f"{n}.mp4" for n in DFEW},
             **{k: clips_dir / "cremad" / f"{v}.flv" for k, v in CREMAD.items()}}
    out = {}
    try:
        for name, path in paths.items():
            record, arrays = extractor.extract(name, path)
            assert record["status"] == "ok", record
            out[name] = arrays["blendshapes"][arrays["face_mask"]]
    finally:
        extractor.close()
    return out


def test_the_landmarker_scores_in_the_documented_order(assets_dir, clips_dir):
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    from dfew_mm.extract.assets import resolve_model

    options = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(
        resolve_model("face_landmarker", assets_dir))), output_face_blendshapes=True, num_faces=1)
    from dfew_mm.extract.decode import decode_clip

    frame = decode_clip(clips_dir / "cremad" / f"{CREMAD['HAP']}.flv", 1).frames[0]
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        result = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame)))
    assert tuple(c.category_name for c in result.face_blendshapes[0]) == BLENDSHAPE_NAMES


def smile(x: np.ndarray) -> float:
    return float(x[:, [BLENDSHAPE_NAMES.index("mouthSmileLeft"), BLENDSHAPE_NAMES.index("mouthSmileRight")]].mean())


def brow_down(x: np.ndarray) -> float:
    return float(x[:, [BLENDSHAPE_NAMES.index("browDownLeft"), BLENDSHAPE_NAMES.index("browDownRight")]].mean())


def test_blendshapes_respond_to_expression_on_real_clips(scores):
    assert all(len(s) >= 6 for s in scores.values())  # faces found in most of the 8 frames
    dfew_smiles = {n: smile(scores[n]) for n in DFEW}
    assert max(dfew_smiles, key=dfew_smiles.get) == "happy" and dfew_smiles["happy"] > 0.3, dfew_smiles
    assert max(v for n, v in dfew_smiles.items() if n != "happy") < 0.15, dfew_smiles
    crema_smiles = {k: smile(scores[k]) for k in CREMAD}
    assert max(crema_smiles, key=crema_smiles.get) == "HAP", crema_smiles
    brows = {k: brow_down(scores[k]) for k in CREMAD}
    assert set(sorted(brows, key=brows.get)[-2:]) == {"ANG", "DIS"}, brows  # frowning: angry and disgust


def test_a_model_trains_with_blendshapes_as_a_modality(tmp_path):
    rng = np.random.default_rng(0)
    dfew, store = make_store(tmp_path / "with", clips=20, frames=4, face=32, audio=100)
    s = FeatureStore(store)
    for clip_id in s.ok_ids():
        arrays = dict(s[clip_id])
        arrays["blendshapes"] = rng.random((4, N_BLENDSHAPES), dtype=np.float32)
        size = s.write_clip(clip_id, arrays)
        s.write_record({**s.read_record(clip_id), "npz_bytes": size})
    run = tmp_path / "run"
    args = ["train", "--config", "tiny", "--store", str(store), "--dfew-root", str(dfew), "--out", str(run),
            "--modalities", "pose,blendshapes", "--no-progress", *SMALL, "train.epochs=1", "data.num_workers=0"]
    assert main(args) == 0
    assert "blendshapes" in (run / "config.yaml").read_text()
    assert json.loads((run / "test_metrics.json").read_text())["best"]["n"] > 0
    out = tmp_path / "preds.csv"
    assert main(["evaluate", "--checkpoint", str(run / "best.pt"), "--store", str(store), "--out", str(out),
                 "--modalities", "blendshapes", "--no-progress"]) == 0

    # a store without the array: stopped before the first epoch, with what to re-extract
    dfew2, plain = make_store(tmp_path / "without", clips=20, frames=4, face=32, audio=100)
    with pytest.raises(StoreError, match="--blendshapes"):
        from dfew_mm.config import load_config
        from dfew_mm.train import train

        train(load_config("tiny", [f"data.store={plain}", f"data.dfew_root={dfew2}", f"train.out_dir={tmp_path / 'r2'}",
                                   "model.modalities=[blendshapes]", *SMALL, "train.epochs=1"]))
