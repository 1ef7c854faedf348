"""The end-to-end demo: synthetic DFEW -> real extraction -> tiny training -> evaluation -> report.

Every step is the same library code a DFEW run uses; only the data are synthetic (drawn people
whose face, posture and voice each carry the emotion, a share of them filmed in low light).
Each step skips work already done in the output folder, so an interrupted demo resumes.

    OUT/dfew/          synthetic DFEW copy (Clip/original/*.mp4, EmoLabel_DataSplit/, synth_truth.csv)
    OUT/features/      feature store
    OUT/runs/<name>/   one tiny training run per modality set
    OUT/predictions/   prediction CSVs + metrics JSON per (run, modality subset), all darkening passes
    OUT/report/        executed notebook, HTML report and figures
    OUT/summary.csv    UAR per modality subset and darkening strength (the table the command prints)
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

# (run name, trained modalities, config overrides, modality subsets evaluated): the face-only
# baseline, and one fused model evaluated with each subset that adds something to the face. The fused
# model trains with modality dropout so that it also works when a modality is masked out.
RUNS = (
    ("video", ("video",), (), (("video",),)),
    ("video+pose+audio", ("video", "pose", "audio"), ("train.modality_dropout=0.25",),
     (("video", "pose"), ("video", "audio"), ("video", "pose", "audio"))),
)
DEMO_DARKEN = "0,0.25,0.5,0.75,1"
DEMO_CLIPS = 60
DEMO_WORKERS = 2


@dataclass
class DemoResult:
    out: Path
    report: Path  # HTML
    notebook: Path  # executed .ipynb
    summary: pd.DataFrame  # UAR (%) per system (rows) and darkening strength (columns)
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

    dfew_root = step("synth", _synth, out / "dfew", clips, seed, workers)
    store = step("extract", _extract, dfew_root, out / "features", workers, assets_dir)
    checkpoints = step("train", _train, dfew_root, store, out / "runs", epochs, seed, overrides)
    predictions = step("evaluate", _evaluate, checkpoints, store, out / "predictions", darken)
    notebook, html = step("report", _report, predictions, out / "report")
    summary = summary_table(predictions)
    summary.to_csv(out / "summary.csv")
    return DemoResult(out, html, notebook, summary, timings)


# -- steps ---------------------------------------------------------------------------------------
def _synth(root: Path, clips: int, seed: int, workers: int) -> Path:
    from dfew_mm.synth import SynthConfig, generate_dataset

    if (root / "synth_truth.csv").is_file():
        log.info("synthetic data already in %s", root)
        return root
    generate_dataset(root, SynthConfig(clips=clips, seed=seed), workers=workers)
    return root


def _extract(dfew_root: Path, store: Path, workers: int, assets_dir) -> Path:
    from dfew_mm.errors import StoreError
    from dfew_mm.extract.options import ExtractOptions
    from dfew_mm.extract.run import list_clips, run_extraction, select_clips

    clips = select_clips(list_clips(dfew_root=dfew_root))
    summary = run_extraction(clips, store, ExtractOptions(), workers=workers, assets_dir=assets_dir)
    for line in summary.lines():
        log.info("extract: %s", line)
    if summary.ok + summary.skipped != len(clips):
        raise StoreError(f"extraction of the demo clips into {store} failed:\n" + "\n".join(summary.lines()))
    return store


def _train(dfew_root: Path, store: Path, runs: Path, epochs: int | None, seed: int,
           overrides: Sequence[str]) -> dict[str, Path]:
    from dfew_mm.config import load_config
    from dfew_mm.train import train

    checkpoints = {}
    for name, modalities, run_overrides, _ in RUNS:
        run_dir = runs / name
        if (run_dir / "test_metrics.json").is_file():
            log.info("run %s already trained", run_dir)
        else:
            items = [f"data.store={store}", f"data.dfew_root={dfew_root}", f"train.out_dir={run_dir}",
                     f"train.seed={seed}", f"model.modalities=[{','.join(modalities)}]"]
            items += [f"train.epochs={epochs}"] if epochs else []
            cfg = load_config("tiny", [*items, *run_overrides, *overrides])
            train(cfg, resume=(run_dir / "last.pt").is_file())
        # The final epoch, not best.pt: the demo's validation split (about 7 clips) is too small to pick
        # an epoch by, and a fixed budget of epochs is what the tiny config is tuned for.
        checkpoints[name] = run_dir / "last.pt"
    return checkpoints


def _evaluate(checkpoints: dict[str, Path], store: Path, folder: Path, darken: str) -> Path:
    from dfew_mm.evaluate import evaluate
    from dfew_mm.predictions import modality_label

    for name, _, _, subsets in RUNS:
        for subset in subsets:
            out_csv = folder / f"{name}__{modality_label(subset)}.csv"
            evaluate(checkpoints[name], store, modalities=list(subset), darken=darken, out_csv=out_csv)
    return folder


def _report(predictions: Path, folder: Path) -> tuple[Path, Path]:
    from dfew_mm.analysis import execute_notebook

    return execute_notebook(predictions, folder)


# -- summary -------------------------------------------------------------------------------------
def summary_table(predictions: str | Path) -> pd.DataFrame:
    """UAR (%) per system and darkening strength, plus UAR on the darkest quarter of clips."""
    from dfew_mm import analysis
    from dfew_mm.metrics import classification_metrics

    data = analysis.load_predictions(predictions)
    curves = analysis.darkening_curves(data)
    table = (100 * curves.pivot(index="system", columns="darken", values="uar")).round(1)
    table.columns = [f"UAR@dark{c:g}" for c in table.columns]
    dark = analysis.low_light_clips(data, 0.25)
    natural = data[(data["perturbation"] == analysis.NATURAL) & data["clip_id"].isin(dark)]
    table["UAR low-light"] = (100 * natural.groupby("system").apply(
        lambda g: classification_metrics(g["label"], g["pred"])["uar"], include_groups=False)).round(1)
    table["clips"] = data[data["perturbation"] == analysis.NATURAL].groupby("system")["clip_id"].nunique()
    return table.reindex(analysis.systems_in_order(data))
