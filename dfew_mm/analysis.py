"""Low-light analysis of prediction files: the tables and figures behind notebooks/low_light_analysis.

Input is a folder of prediction files written by `dfew_mm evaluate` (PREDICTION_COLUMNS), one or
more runs, folds, modality subsets and darkening strengths. A *system* is a model configuration
evaluated with a modality subset, labelled by that subset ("video", "video+pose", ...); the folds of
a cross-validation pool into one system. Brightness of a clip is the mean luma of its face crops (`face_luma_mean`);
for clips where no face was found it falls back to the whole-frame `luma_mean`, because those are
often the darkest clips and dropping them would hide the hardest cases.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from dfew_mm.constants import CLASSES, MODALITIES
from dfew_mm.errors import DfewMMError
from dfew_mm.predictions import PREDICTION_COLUMNS, metrics_path_for
from dfew_mm.metrics import classification_metrics

log = logging.getLogger(__name__)
NATURAL = "none"  # perturbation label of the unperturbed pass


# -- loading ---------------------------------------------------------------------------------
def load_predictions(folder: str | Path) -> pd.DataFrame:
    """All prediction files under `folder`, concatenated, with `system` and `brightness` columns."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*.csv") if metrics_path_for(p).is_file())
    if not files:
        raise DfewMMError(f"no prediction files in {folder}: write them with "
                          "`dfew_mm evaluate ... --out {folder}/NAME.csv`")
    frames = []
    for path in files:
        frame = pd.read_csv(path, dtype={"clip_id": str})
        missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
        if missing:
            raise DfewMMError(f"{path} lacks prediction columns {missing}; re-run `dfew_mm evaluate`")
        frames.append(frame.assign(source=path.name))
    data = pd.concat(frames, ignore_index=True)
    data["system"] = _system_labels(data)
    key = ["system", "perturbation", "fold", "clip_id"]
    repeated = data.duplicated(key, keep="last")
    if repeated.any():
        log.warning("%d rows repeat a (system, perturbation, fold, clip) of another file; keeping the last "
                    "file's (%s)", int(repeated.sum()), ", ".join(sorted(data.loc[repeated, "source"].unique())))
        data = data[~repeated].reset_index(drop=True)
    data["brightness"] = data["face_luma_mean"].fillna(data["luma_mean"])
    log.info("loaded %d rows from %d prediction files", len(data), len(files))
    return data


def _system_labels(data: pd.DataFrame) -> pd.Series:
    """Modalities label, plus the trained modalities where models trained differently share it.

    Runs of the same configuration on different folds pool into one system; a face-only model and
    a fused model evaluated on video alone stay apart ("video" vs "video [of video+pose+audio]").
    """
    trained_per_label = data.groupby("modalities")["trained_modalities"].nunique()
    shared = set(trained_per_label[trained_per_label > 1].index)
    return pd.Series([f"{m} [of {t}]" if m in shared and m != t else m
                      for m, t in zip(data["modalities"], data["trained_modalities"])], index=data.index)


def systems_in_order(data: pd.DataFrame) -> list[str]:
    """Systems sorted by number of modalities, then in MODALITIES order (video first)."""
    def key(system: str) -> tuple:
        mods = system.split(" ")[0].split("+")
        return (len(mods), [MODALITIES.index(m) for m in mods], system)

    return sorted(data["system"].unique(), key=key)


def store_paths(folder: str | Path) -> list[Path]:
    """Feature stores named in the metrics files beside the predictions (for the crop grid)."""
    stores = []
    for path in sorted(Path(folder).rglob("*.metrics.json")):
        store = Path(json.loads(path.read_text()).get("store", ""))
        if store.is_dir() and store not in stores:
            stores.append(store)
    return stores


# -- tables ----------------------------------------------------------------------------------
def _scores(group: pd.DataFrame) -> pd.Series:
    m = classification_metrics(group["label"].to_numpy(), group["pred"].to_numpy())
    return pd.Series({"uar": m["uar"], "war": m["war"], "n": m["n"]})


def brightness_bins(data: pd.DataFrame, n_bins: int = 4) -> pd.DataFrame:
    """UAR and WAR per brightness quantile bin (bin 1 = darkest) of the unperturbed clips."""
    natural = data[data["perturbation"] == NATURAL]
    clips = natural.drop_duplicates("clip_id").set_index("clip_id")["brightness"]
    n_bins = max(1, min(n_bins, len(clips)))
    # Ranks break ties, so quantile edges never collapse on small sets.
    bins = pd.qcut(clips.rank(method="first"), n_bins, labels=False) + 1
    edges = clips.groupby(bins).agg(["min", "max"])
    table = (natural.assign(bin=natural["clip_id"].map(bins))
             .groupby(["system", "bin"]).apply(_scores, include_groups=False).reset_index())
    table["n"] = table["n"].astype(int)
    table["luma_range"] = table["bin"].map(lambda b: f"{edges.loc[b, 'min']:.0f}-{edges.loc[b, 'max']:.0f}")
    return table


def low_light_clips(data: pd.DataFrame, quantile: float = 0.25) -> list[str]:
    """Clip ids in the darkest `quantile` of brightness (at least one clip)."""
    clips = data.drop_duplicates("clip_id").set_index("clip_id")["brightness"].sort_values(kind="stable")
    return clips.index[: max(1, int(round(quantile * len(clips))))].tolist()


def darkening_curves(data: pd.DataFrame) -> pd.DataFrame:
    """UAR and WAR against darkening strength per system."""
    table = data.groupby(["system", "darken"]).apply(_scores, include_groups=False).reset_index()
    table["n"] = table["n"].astype(int)
    return table


def fix_table(data: pd.DataFrame, clip_ids: Sequence[str] | None = None, baseline: str = "video",
              perturbation: str = NATURAL) -> pd.DataFrame:
    """What each system fixes and breaks relative to `baseline` on the given clips and pass.

    fixed = share of the clips the baseline gets wrong that the system gets right;
    broken = share of the clips the baseline gets right that the system gets wrong.
    """
    rows = data[data["perturbation"] == perturbation]
    if clip_ids is not None:
        rows = rows[rows["clip_id"].isin(set(clip_ids))]
    if baseline not in set(rows["system"]):
        raise DfewMMError(f"baseline system '{baseline}' has no predictions for pass '{perturbation}' "
                          f"(systems: {', '.join(systems_in_order(data))})")
    base = rows[rows["system"] == baseline].set_index(["fold", "clip_id"])["correct"].astype(bool)
    out = []
    for system in systems_in_order(rows):
        if system == baseline:
            continue
        other = rows[rows["system"] == system].set_index(["fold", "clip_id"])["correct"].astype(bool)
        b, o = base.align(other, join="inner")
        wrong, right = ~b, b
        out.append({
            "system": system,
            "baseline_wrong": int(wrong.sum()),
            "fixed": int((wrong & o).sum()),
            "fixed_share": float((wrong & o).sum() / wrong.sum()) if wrong.any() else np.nan,
            "baseline_right": int(right.sum()),
            "broken": int((right & ~o).sum()),
            "broken_share": float((right & ~o).sum() / right.sum()) if right.any() else np.nan,
        })
    return pd.DataFrame(out, columns=["system", "baseline_wrong", "fixed", "fixed_share",
                                      "baseline_right", "broken", "broken_share"])


def per_class_recall(data: pd.DataFrame, clip_ids: Sequence[str] | None = None,
                     perturbation: str = NATURAL) -> pd.DataFrame:
    """Recall per class (columns, CLASSES order) per system (rows); NaN where a class is absent."""
    rows = data[data["perturbation"] == perturbation]
    if clip_ids is not None:
        rows = rows[rows["clip_id"].isin(set(clip_ids))]
    table = {}
    for system in systems_in_order(rows):
        group = rows[rows["system"] == system]
        table[system] = classification_metrics(group["label"], group["pred"])["per_class_recall"]
    return pd.DataFrame.from_dict(table, orient="index", columns=list(CLASSES))


def class_counts(data: pd.DataFrame, clip_ids: Sequence[str] | None = None) -> pd.Series:
    """Number of distinct clips per true class (CLASSES order), optionally among `clip_ids`."""
    rows = data.drop_duplicates(["fold", "clip_id"])
    if clip_ids is not None:
        rows = rows[rows["clip_id"].isin(set(clip_ids))]
    return rows["label_name"].value_counts().reindex(list(CLASSES), fill_value=0)


def dark_examples(data: pd.DataFrame, system: str, n: int = 12) -> pd.DataFrame:
    """The `n` darkest clips with their true and predicted labels under `system` (unperturbed)."""
    rows = data[(data["perturbation"] == NATURAL) & (data["system"] == system)]
    return rows.sort_values("brightness", kind="stable").head(n)[
        ["clip_id", "brightness", "label_name", "pred_name", "correct"]].reset_index(drop=True)


def face_crop(store, clip_id: str) -> np.ndarray:
    """A representative face crop (S, S, 3) of a clip: the middle frame among those with a face."""
    arrays = store[clip_id]
    faces, mask = arrays["faces"], arrays["face_mask"]  # (T, S, S, 3), (T,)
    frames = np.flatnonzero(mask) if mask.any() else np.arange(len(faces))
    return faces[frames[len(frames) // 2]]


# -- figures ---------------------------------------------------------------------------------
def plot_brightness_bins(table: pd.DataFrame):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    order = systems_in_order(table)
    labels = table.drop_duplicates("bin").set_index("bin")["luma_range"].sort_index()
    for ax, metric in zip(axes, ("uar", "war")):
        for system in order:
            part = table[table["system"] == system].sort_values("bin")
            ax.plot(part["bin"], 100 * part[metric], marker="o", label=system)
        ax.set_xticks(labels.index, [f"Q{b}\n{r}" for b, r in labels.items()])
        ax.set_xlabel("face-luma quantile bin (1 = darkest; luma range)")
        ax.set_ylabel(f"{metric.upper()} (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_title("UAR by brightness")
    axes[1].set_title("WAR by brightness")
    axes[1].legend(title="modalities", fontsize=8)
    fig.tight_layout()
    return fig


def plot_darkening(curves: pd.DataFrame):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, metric in zip(axes, ("uar", "war")):
        for system in systems_in_order(curves):
            part = curves[curves["system"] == system].sort_values("darken")
            ax.plot(part["darken"], 100 * part[metric], marker="o", label=system)
        ax.set_xlabel("darkening strength (0 = original frames)")
        ax.set_ylabel(f"{metric.upper()} (%)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.set_title(f"{metric.upper()} under synthetic low light")
    axes[1].legend(title="modalities", fontsize=8)
    fig.tight_layout()
    return fig


def plot_per_class(table: pd.DataFrame, counts: pd.Series | None = None):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / max(1, len(table))
    x = np.arange(len(CLASSES))
    for i, (system, recalls) in enumerate(table.iterrows()):
        ax.bar(x + i * width - 0.4 + width / 2, 100 * recalls.to_numpy(dtype=float), width, label=system)
    absent = table.isna().all(axis=0).to_numpy()
    for xi in x[absent]:
        ax.text(xi, 2, "absent", ha="center", fontsize=8, color="grey")
    labels = CLASSES if counts is None else [f"{c}\n(n={counts[c]})" for c in CLASSES]
    ax.set_xticks(x, labels)
    ax.set_ylabel("recall (%)")
    ax.set_ylim(0, 100)
    ax.set_title("per-class recall on low-light clips (no bar above a present class: recall 0)")
    ax.legend(title="modalities", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_crop_grid(crops: Sequence[np.ndarray], examples: pd.DataFrame, title: str = "", columns: int = 6):
    import matplotlib.pyplot as plt

    rows = max(1, int(np.ceil(len(crops) / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2.8 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, crop, (_, ex) in zip(axes.ravel(), crops, examples.iterrows()):
        ax.imshow(crop)
        ax.set_title(f"{ex['clip_id']} luma {ex['brightness']:.0f}\ntrue {ex['label_name']}\n"
                     f"pred {ex['pred_name']}", fontsize=8, color="green" if ex["correct"] else "red")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig, folder: str | Path, name: str) -> Path:
    """Save a figure as PNG under `folder` (created) and return the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


# -- headless execution ------------------------------------------------------------------------
NOTEBOOK = "low_light_analysis.ipynb"  # in the top-level notebooks/ folder, shipped as dfew_mm.notebooks


def shipped_notebook(name: str = NOTEBOOK):
    """The notebook file shipped with the package (a Traversable: read it with .read_text())."""
    from importlib import resources

    return resources.files("dfew_mm.notebooks").joinpath(name)


def execute_notebook(predictions_dir: str | Path, out_dir: str | Path, notebook: str | Path | None = None,
                     timeout: int = 600, **parameters) -> tuple[Path, Path]:
    """Run the analysis notebook headless on a predictions folder; returns (executed .ipynb, .html).

    Parameters are injected papermill-style: a cell tagged `injected-parameters` after the cell
    tagged `parameters`, so papermill itself can run the same notebook. Figures go to
    `out_dir/figures` unless `figures_dir` is given.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from nbconvert import HTMLExporter

    source = shipped_notebook() if notebook is None else Path(notebook)
    if not source.is_file():
        raise DfewMMError(f"notebook {source} not found")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    values = {"predictions_dir": str(Path(predictions_dir).resolve()),
              "figures_dir": str((out_dir / "figures").resolve()), **parameters}
    nb = nbformat.reads(source.read_text(encoding="utf-8"), as_version=4)
    nb.cells.insert(_parameters_index(nb) + 1, nbformat.v4.new_code_cell(
        "# Injected parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items()),
        metadata={"tags": ["injected-parameters"]}))
    executed = out_dir / source.name
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(out_dir)}})
    try:
        client.execute()
    except CellExecutionError as err:
        nbformat.write(nb, executed)
        raise DfewMMError(f"notebook {source.name} failed (partial output in {executed}):\n{err}") from err
    nbformat.write(nb, executed)
    html, _ = HTMLExporter().from_notebook_node(nb)
    html_path = executed.with_suffix(".html")
    html_path.write_text(html, encoding="utf-8")
    return executed, html_path


def _parameters_index(nb) -> int:
    for i, cell in enumerate(nb.cells):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return i
    raise DfewMMError("the notebook has no cell tagged 'parameters'")
