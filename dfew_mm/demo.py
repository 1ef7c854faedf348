"""The end-to-end demo: synthetic DFEW -> real extraction -> tiny training -> evaluation -> report.

Every step is the same library code a DFEW run uses; only the data are synthetic (drawn people
whose face, posture and voice each carry the emotion, a share of them filmed in low light).
Each step skips work already done in the output folder, so an interrupted demo resumes.

    OUT/dfew/          synthetic DFEW copy (Clip/original/*.mp4, EmoLabel_DataSplit/, synth_truth.csv)
    OUT/splits/        the demo's fold 1: half of the clips tested (DEMO_TEST_SHARE)
    OUT/features/      feature store
    OUT/runs/<name>/   one tiny training run per modality, and the fused model
    OUT/predictions/   prediction CSVs + metrics JSON per (run, modality subset), all darkening passes
    OUT/report/        executed notebook, HTML report and figures
    OUT/summary.csv    UARs with intervals and the paired comparisons the command prints (demo_summary)
    OUT/darkening.csv  UAR per system and darkening strength
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pandas is imported where it is used: `dfew_mm --help` reads this module's defaults
    import pandas as pd

log = logging.getLogger(__name__)

# (run name, trained modalities, modality subsets evaluated): one reference model per modality, and
# one fused model with the default (balanced) recipe, evaluated with every subset that adds something
# to the face and, with all three, with leave-one-modality-out attribution. The fused model trains
# with modality dropout so that it also works when a modality is masked out.
FUSED = "video+pose+audio"
RUNS = (
    ("video", ("video",), (("video",),)),
    ("pose", ("pose",), (("pose",),)),
    ("audio", ("audio",), (("audio",),)),
    (FUSED, ("video", "pose", "audio"), (("video", "pose"), ("video", "audio"), ("video", "pose", "audio"))),
)
SINGLES = ("video", "pose", "audio")
DEMO_DARKEN = "0,0.5,1"
DEMO_CLIPS = 210  # 30 per class
# 5 per class: after the test half, 3 training clips per class leave one for validation in most classes.
MIN_CLIPS = 35
DEMO_WORKERS = 2
# Half the clips are tested (DFEW's protocol tests 20%): ~105 test clips give UAR intervals of about
# ±10 points where the 12 test clips of a 60-clip 5-fold split gave ±30; ~90 train clips, 15% of
# them for validation.
DEMO_TEST_SHARE = 0.5
DEMO_SECONDS = 1.0  # clip length: 1 s of audio is enough for the voice cue (2-6 syllables)
DEMO_FRAMES = 4  # frames extracted and fed to the model: the synthetic cues hold still within a clip
DEMO_FACE_SIZE = 48  # px stored (the tiny config feeds the face CNN 32 px)
# Overrides of configs/tiny.yaml for the demo's short clips and 4 frames.
DEMO_OVERRIDES = (f"data.frames={DEMO_FRAMES}", f"data.face_size={DEMO_FACE_SIZE}", "data.audio_frames=100",
                  "model.audio.max_length=112")


@dataclass
class DemoResult:
    out: Path
    report: Path  # HTML
    notebook: Path  # executed .ipynb
    summary: pd.DataFrame  # UARs per system and clip subset, and the paired comparisons (see demo_summary)
    darkening: pd.DataFrame  # UAR (%) per system (rows) and darkening strength (columns)
    timings: dict[str, float] = field(default_factory=dict)  # step -> seconds


def run_demo(out: str | Path = "demo", assets_dir: str | Path | None = None, clips: int = DEMO_CLIPS,
             epochs: int | None = None, workers: int = DEMO_WORKERS, darken: str = DEMO_DARKEN, seed: int = 0,
             overrides: Sequence[str] = ()) -> DemoResult:
    """Run all demo steps into `out`; `epochs` and `overrides` adjust the tiny training config."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    def step(name: str, fn, *args):
        tic = time.perf_counter()
        log.info("demo: %s", name)
        value = fn(*args)
        timings[name] = round(time.perf_counter() - tic, 1)
        return value

    dfew_root, splits = step("synth", _synth, out / "dfew", clips, seed, workers)
    store = step("extract", _extract, dfew_root, out / "features", workers, assets_dir)
    checkpoints = step("train", _train, splits, store, out / "runs", epochs, seed, overrides)
    predictions = step("evaluate", _evaluate, checkpoints, store, out / "predictions", darken)
    notebook, html = step("report", _report, predictions, out / "report")
    summary = demo_summary(predictions)
    summary.to_csv(out / "summary.csv", index=False)
    darkening = summary_table(predictions)
    darkening.to_csv(out / "darkening.csv")
    return DemoResult(out, html, notebook, summary, darkening, timings)


# -- steps ---------------------------------------------------------------------------------------
def _synth(root: Path, clips: int, seed: int, workers: int) -> tuple[Path, Path]:
    """The synthetic DFEW copy and the demo's own split files (fold 1, DEMO_TEST_SHARE tested)."""
    import pandas as pd

    from dfew_mm.synth import SynthConfig, generate_dataset, write_holdout_split

    if (root / "synth_truth.csv").is_file():
        log.info("synthetic data already in %s", root)
    else:
        generate_dataset(root, SynthConfig(clips=clips, seed=seed, seconds=DEMO_SECONDS), workers=workers)
    splits = root.parent / "splits"
    return root, write_holdout_split(splits, pd.read_csv(root / "synth_truth.csv"), DEMO_TEST_SHARE, seed)


def _extract(dfew_root: Path, store: Path, workers: int, assets_dir) -> Path:
    from dfew_mm.errors import StoreError
    from dfew_mm.extract.options import ExtractOptions
    from dfew_mm.extract.run import list_clips, run_extraction, select_clips

    clips = select_clips(list_clips(dfew_root=dfew_root))
    options = ExtractOptions(frames=DEMO_FRAMES, face_size=DEMO_FACE_SIZE)
    summary = run_extraction(clips, store, options, workers=workers, assets_dir=assets_dir)
    for line in summary.lines():
        log.info("extract: %s", line)
    if summary.ok + summary.skipped != len(clips):
        raise StoreError(f"extraction of the demo clips into {store} failed:\n" + "\n".join(summary.lines()))
    return store


def _train(splits: Path, store: Path, runs: Path, epochs: int | None, seed: int,
           overrides: Sequence[str]) -> dict[str, Path]:
    from dfew_mm.config import load_config
    from dfew_mm.train import train

    checkpoints = {}
    for name, modalities, _ in RUNS:
        run_dir = runs / name
        if (run_dir / "test_metrics.json").is_file():
            log.info("run %s already trained", run_dir)
        else:
            items = [f"data.store={store}", f"data.splits_dir={splits}", f"train.out_dir={run_dir}",
                     f"train.seed={seed}", f"model.modalities=[{','.join(modalities)}]", *DEMO_OVERRIDES]
            items += [f"train.epochs={epochs}"] if epochs else []
            cfg = load_config("tiny", [*items, *overrides])
            train(cfg, resume=(run_dir / "last.pt").is_file())
        # The final epoch, not best.pt: a fixed budget of epochs is what the tiny config is tuned for,
        # and the demo's validation split (about 15 clips) picks an epoch mostly by chance.
        checkpoints[name] = run_dir / "last.pt"
    return checkpoints


def _evaluate(checkpoints: dict[str, Path], store: Path, folder: Path, darken: str) -> Path:
    from dfew_mm.evaluate import evaluate
    from dfew_mm.predictions import modality_label

    for name, trained, subsets in RUNS:
        for subset in subsets:
            out_csv = folder / f"{name}__{modality_label(subset)}.csv"
            if not out_csv.is_file():
                # leave-one-modality-out reliance for the fused model with everything it has
                attribution = len(subset) > 1 and len(subset) == len(trained)
                evaluate(checkpoints[name], store, modalities=list(subset), darken=darken, out_csv=out_csv,
                         attribution=attribution)
    return folder


def _report(predictions: Path, folder: Path) -> tuple[Path, Path]:
    from dfew_mm.analysis import execute_notebook

    return execute_notebook(predictions, folder)


# -- summary -------------------------------------------------------------------------------------
SUMMARY_COLUMNS = ["kind", "system", "baseline", "clips", "n", "uar", "uar_low", "uar_high", "holds"]


def demo_summary(predictions: str | Path) -> pd.DataFrame:
    """What the demo claims, as numbers with 95% bootstrap intervals (percent) and clip counts.

    Rows of kind `UAR`: each reference model and the fused model on all test clips, the low-light
    clips (face luma below DARK_FACE_LUMA) and the rest (`normal`). Rows of kind `paired difference`
    (UAR of `system` minus UAR of `baseline` on the same clips, paired bootstrap): the fused model
    against the best single modality on all clips, and against the face-only model on the low-light
    clips. `holds` says whether the claim holds for the point estimate: the face-only model is worse
    in low light than in normal light; the fused model is at least as good as the best single
    modality; the fused model is better than the face-only model in low light.
    """
    import pandas as pd

    from dfew_mm import analysis
    from dfew_mm.stats import paired_difference

    data = analysis.load_predictions(predictions)
    natural = data[data["perturbation"] == analysis.NATURAL]
    scores = analysis.subset_scores(data)
    scores = scores[scores["system"].isin([*SINGLES, FUSED])]
    rows = [{"kind": "UAR", "system": r.system, "baseline": "", "clips": r.clips, "n": r.n,
             "uar": 100 * r.uar, "uar_low": 100 * r.uar_low, "uar_high": 100 * r.uar_high, "holds": ""}
            for r in scores.itertuples()]
    face = scores[scores["system"] == "video"].set_index("clips")["uar"]
    for row in rows:
        if row["system"] == "video" and row["clips"] == "low-light":
            row["holds"] = "yes" if face["low-light"] < face["normal"] else "no"
    overall = scores[scores["clips"] == "all"].set_index("system")["uar"]
    best = max(SINGLES, key=lambda m: overall.get(m, -1.0))
    dark = set(analysis.dark_clips(natural))
    for baseline, clips, strict in ((best, "all", False), ("video", "low-light", True)):
        part = natural if clips == "all" else natural[natural["clip_id"].isin(dark)]
        both = part[part["system"] == FUSED].merge(part[part["system"] == baseline], on="clip_id",
                                                   suffixes=("", "_base"))
        diff = paired_difference(both["label"], both["pred"], both["pred_base"])
        holds = diff["diff"] > 0 if strict else diff["diff"] >= 0
        rows.append({"kind": "paired difference", "system": FUSED, "baseline": baseline, "clips": clips,
                     "n": len(both), "uar": 100 * diff["diff"], "uar_low": 100 * diff["low"],
                     "uar_high": 100 * diff["high"], "holds": "yes" if holds else "no"})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def format_summary(summary: pd.DataFrame) -> str:
    """The demo's claims in words and numbers, for the terminal."""
    def cell(r) -> str:
        sign = "+" if r.kind != "UAR" else ""
        return f"{r.uar:{sign}.1f} [{r.uar_low:{sign}.1f}, {r.uar_high:{sign}.1f}] (n={r.n})"

    scores = summary[summary["kind"] == "UAR"]
    table = scores.assign(cell=[cell(r) for r in scores.itertuples()]).pivot(
        index="system", columns="clips", values="cell").reindex(index=[*SINGLES, FUSED],
                                                                 columns=["all", "low-light", "normal"])
    lines = ["UAR (%) on the test clips, 95% bootstrap interval and clip count:", table.to_string(), ""]
    face = scores[scores["system"] == "video"].set_index("clips")
    lines.append(f"face-only, low light vs normal:   {cell(next(face.loc[['low-light']].itertuples()))} vs "
                 f"{cell(next(face.loc[['normal']].itertuples()))}  lower in low light: "
                 f"{face.loc['low-light', 'holds']}")
    for r in summary[summary["kind"] == "paired difference"].itertuples():
        claim = "at least as good" if r.clips == "all" else "better"
        lines.append(f"{r.system} - {r.baseline} ({r.clips} clips, paired): {cell(r)}  {claim}: {r.holds}")
    return "\n".join(lines)


def summary_table(predictions: str | Path) -> pd.DataFrame:
    """UAR (%) per system and darkening strength, plus UAR on the darkest quarter of clips."""
    from dfew_mm import analysis
    from dfew_mm.metrics import classification_metrics

    data = analysis.load_predictions(predictions)
    classes = analysis.classes_of(data)
    curves = analysis.darkening_curves(data)
    table = (100 * curves.pivot(index="system", columns="darken", values="uar")).round(1)
    table.columns = [f"UAR@dark{c:g}" for c in table.columns]
    dark = analysis.low_light_clips(data, 0.25)
    natural = data[(data["perturbation"] == analysis.NATURAL) & data["clip_id"].isin(dark)]
    table["UAR darkest 25%"] = (100 * natural.groupby("system").apply(
        lambda g: classification_metrics(g["label"], g["pred"], classes)["uar"], include_groups=False)).round(1)
    table["clips"] = data[data["perturbation"] == analysis.NATURAL].groupby("system")["clip_id"].nunique()
    return table.reindex(analysis.systems_in_order(data))
