"""Low-light analysis of prediction files: the tables and figures behind notebooks/low_light_analysis.

Input is a folder of prediction files written by `dfew_mm evaluate` (dfew_mm.predictions), one or
more runs, folds, modality subsets and darkening strengths, all of one dataset: the class names and
their order come from the files' probability columns (`classes_of`), never from this module.
A *system* is a model configuration
evaluated with a modality subset, labelled by that subset ("video", "video+pose", ...); the folds of
a cross-validation pool into one system. Brightness of a clip is the mean luma of its face crops (`face_luma_mean`);
for clips where no face was found it falls back to the whole-frame `luma_mean`, because those are
often the darkest clips and dropping them would hide the hardest cases. It is the clip's *natural*
brightness: taken from passes that read the original store (`none` and crop-level passes), never
from a scene-darkened store, whose quality columns describe the darkened frames.

Darkening comes in two kinds (`darken_kind`, see dfew_mm.predictions): `scene` passes read a store
whose frames were darkened before detection; `crop` passes darkened the stored face crops at
evaluation time (an approximation that leaves detection untouched). Curves of the two kinds are
kept apart everywhere (`darkening_curves`, `detection_rates`, the figures).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from dfew_mm.constants import DARK_FACE_LUMA
from dfew_mm.models.encoders import ENCODERS
from dfew_mm.errors import DfewMMError
from dfew_mm.predictions import (RELIANCE_COLUMNS, classes_of, metrics_path_for, prediction_columns,
                                 upgrade_predictions)
from dfew_mm.metrics import classification_metrics
from dfew_mm.stats import (format_interval, mcnemar, mean_interval, metric_intervals, paired_difference,
                           proportion_interval)

log = logging.getLogger(__name__)
NATURAL = "none"  # perturbation label of the unperturbed pass
KINDS = ("scene", "crop")  # darkening kinds, the faithful one first
KIND_NAMES = {"scene": "scene level (frames darkened before detection)",
              "crop": "crop level (stored face crops darkened; approximation)", "none": "no darkening"}
KIND_LINES = {"scene": "-", "crop": "--", "none": "-"}


# -- loading ---------------------------------------------------------------------------------
def load_predictions(folder: str | Path) -> pd.DataFrame:
    """All prediction files under `folder`, concatenated, with `system` and `brightness` columns."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*.csv") if metrics_path_for(p).is_file())
    if not files:
        raise DfewMMError(f"no prediction files in {folder}: write them with "
                          "`dfew_mm evaluate ... --out {folder}/NAME.csv`")
    frames, classes = [], None
    for path in files:
        frame = upgrade_predictions(pd.read_csv(path, dtype={"clip_id": str}))
        missing = [c for c in prediction_columns(classes_of(frame)) if c not in frame.columns]
        if missing or not classes_of(frame):
            raise DfewMMError(f"{path} lacks prediction columns {missing or ['prob_<class>']}; "
                              "re-run `dfew_mm evaluate`")
        if classes is not None and classes_of(frame) != classes:
            raise DfewMMError(f"{path} predicts the classes {', '.join(classes_of(frame))}, the other files of "
                              f"{folder} {', '.join(classes)}: analyse one dataset's predictions per folder")
        classes = classes_of(frame)
        frames.append(frame.assign(source=path.name))
    data = pd.concat(frames, ignore_index=True)
    data["system"] = _system_labels(data)
    key = ["system", "perturbation", "fold", "clip_id"]
    repeated = data.duplicated(key, keep="last")
    if repeated.any():
        log.warning("%d rows repeat a (system, perturbation, fold, clip) of another file; keeping the last "
                    "file's (%s)", int(repeated.sum()), ", ".join(sorted(data.loc[repeated, "source"].unique())))
        data = data[~repeated].reset_index(drop=True)
    data["brightness"] = natural_brightness(data)
    log.info("loaded %d rows from %d prediction files", len(data), len(files))
    return data


def natural_brightness(data: pd.DataFrame) -> pd.Series:
    """Per row, its clip's brightness in the original store: face luma, else frame luma, from the
    rows that did not read a scene-darkened store; NaN for clips evaluated only on darkened stores."""
    original = data[data["darken_kind"] != "scene"]
    per_clip = original["face_luma_mean"].fillna(original["luma_mean"]).groupby(original["clip_id"]).first()
    brightness = data["clip_id"].map(per_clip)
    unknown = data.loc[brightness.isna() & (data["darken_kind"] == "scene"), "clip_id"].unique()
    if len(unknown):
        log.warning("%d clips were evaluated only on scene-darkened stores, so their natural brightness is unknown "
                    "and they are left out of the brightness tables (e.g. %s); evaluate the original store too",
                    len(unknown), ", ".join(unknown[:5]))
    return brightness


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
    """Systems sorted by number of modalities, then in the registry's order (video first)."""
    order = list(ENCODERS)

    def key(system: str) -> tuple:
        mods = system.split(" ")[0].split("+")
        return (len(mods), [order.index(m) for m in mods], system)

    return sorted(data["system"].unique(), key=key)


def store_paths(folder: str | Path, scene_darken: float | None = 0.0) -> list[Path]:
    """Feature stores named in the metrics files beside the predictions (for the crop grids): by
    default the original ones; `scene_darken` S > 0 those darkened at scene level with strength S,
    None all of them."""
    stores = []
    for path in sorted(Path(folder).rglob("*.metrics.json")):
        saved = json.loads(path.read_text())
        named = saved.get("store") or ""
        store = Path(named)
        strength = float(saved.get("scene_darken") or 0.0)
        if scene_darken is not None and not np.isclose(strength, scene_darken):
            continue
        if named and store.is_dir() and store not in stores:  # Path("") would be the working directory
            stores.append(store)
    return stores


# -- tables ----------------------------------------------------------------------------------
# Every score comes with a bootstrap interval (dfew_mm.stats): `uar_low`/`uar_high`, `war_low`/`war_high`.
INTERVAL_COLUMNS = ("uar", "uar_low", "uar_high", "war", "war_low", "war_high", "n")


def _scores(group: pd.DataFrame) -> pd.Series:
    ci = metric_intervals(group["label"].to_numpy(), group["pred"].to_numpy())
    return pd.Series({"uar": ci["uar"]["value"], "uar_low": ci["uar"]["low"], "uar_high": ci["uar"]["high"],
                      "war": ci["war"]["value"], "war_low": ci["war"]["low"], "war_high": ci["war"]["high"],
                      "n": len(group)})


def _score_table(rows: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    table = rows.groupby(by).apply(_scores, include_groups=False).reset_index()
    table["n"] = table["n"].astype(int)
    return table


def brightness_bins(data: pd.DataFrame, n_bins: int = 4) -> pd.DataFrame:
    """UAR and WAR with intervals per brightness quantile bin (bin 1 = darkest) of the unperturbed clips."""
    natural = data[data["perturbation"] == NATURAL]
    clips = natural.drop_duplicates("clip_id").set_index("clip_id")["brightness"]
    n_bins = max(1, min(n_bins, len(clips)))
    # Ranks break ties, so quantile edges never collapse on small sets.
    bins = pd.qcut(clips.rank(method="first"), n_bins, labels=False) + 1
    edges = clips.groupby(bins).agg(["min", "max"])
    table = _score_table(natural.assign(bin=natural["clip_id"].map(bins)), ["system", "bin"])
    table["luma_range"] = table["bin"].map(lambda b: f"{edges.loc[b, 'min']:.0f}-{edges.loc[b, 'max']:.0f}")
    return table


def low_light_clips(data: pd.DataFrame, quantile: float = 0.25) -> list[str]:
    """Clip ids in the darkest `quantile` of brightness (at least one clip): relative to these clips."""
    clips = data.drop_duplicates("clip_id").set_index("clip_id")["brightness"].dropna().sort_values(kind="stable")
    return clips.index[: max(1, int(round(quantile * len(clips))))].tolist()


def dark_clips(data: pd.DataFrame, threshold: float = DARK_FACE_LUMA) -> list[str]:
    """Clip ids whose brightness (face luma, else frame luma) is below the absolute `threshold`
    (constants.DARK_FACE_LUMA): the same definition of dark in every fold and store."""
    clips = data.drop_duplicates("clip_id").set_index("clip_id")["brightness"]
    return clips.index[clips < threshold].tolist()


def low_light_selection(data: pd.DataFrame, dark_luma: float = DARK_FACE_LUMA,
                        quantile: float = 0.25) -> tuple[list[str], str]:
    """The low-light clips of a report and a description of the definition used: brightness below
    the absolute `dark_luma`; when no clip is that dark (a well-lit set), the darkest `quantile`, so
    that the low-light tables are not empty (the description says so)."""
    dark = dark_clips(data, dark_luma)
    if dark:
        return dark, f"face luma below {dark_luma:g}"
    log.warning("no clip has face luma below %g: low light falls back to the darkest %.0f%%", dark_luma,
                100 * quantile)
    return low_light_clips(data, quantile), f"the darkest {quantile:.0%}, as no clip has face luma below {dark_luma:g}"


def darkening_kinds(data: pd.DataFrame) -> list[str]:
    """The darkening kinds with passes in `data`, scene level first."""
    return [k for k in KINDS if (data["darken_kind"] == k).any()]


def _same_clips(rows: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Rows of the (fold, clip) pairs that every pass (perturbation) of their `by` group predicted, so
    that the points of a curve differ by the darkening only."""
    by = list(by)
    seen = rows.groupby(by + ["fold", "clip_id"])["perturbation"].transform("nunique")
    passes = rows.groupby(by)["perturbation"].transform("nunique") if by else rows["perturbation"].nunique()
    return rows[seen == passes]


def _by_kind(data: pd.DataFrame, kind: str | None) -> list[tuple[str, pd.DataFrame]]:
    """(kind, its passes plus the unperturbed one) for `kind` or every kind present; ('none', the
    unperturbed rows) when nothing was darkened."""
    kinds = [kind] if kind is not None else darkening_kinds(data)
    if not kinds:
        return [("none", data[data["darken_kind"] == "none"])]
    return [(k, data[data["darken_kind"].isin(("none", k))]) for k in kinds if (data["darken_kind"] == k).any()]


def darkening_curves(data: pd.DataFrame, kind: str | None = None) -> pd.DataFrame:
    """UAR and WAR with intervals against darkening strength, per darkening kind and system.

    `kind` 'scene', 'crop' or None (every kind present, in the `kind` column). The unperturbed pass is
    the strength-0 point of each kind's curves, and each curve keeps the clips all its passes
    predicted. Without darkened passes: the unperturbed point alone (kind 'none').
    """
    parts = [_score_table(_same_clips(rows, ["system"]), ["system", "darken"]).assign(kind=k)
             for k, rows in _by_kind(data, kind) if len(rows)]
    if not parts:
        return pd.DataFrame(columns=["kind", "system", "darken", *INTERVAL_COLUMNS])
    table = pd.concat(parts, ignore_index=True)
    return table[["kind", "system", "darken", *INTERVAL_COLUMNS]]


RATE_COLUMNS = ("face_rate", "pose_rate")


def detection_rates(data: pd.DataFrame, kind: str | None = None) -> pd.DataFrame:
    """Mean face and pose detection rates of the evaluated clips per darkening kind and strength, with
    95% intervals (Bayesian bootstrap over clips), and the mean frame and face luma of the store read.

    The rates come from the manifest of the store each pass read: for `scene` passes the darkened
    store, where detection ran on the dark frames (the evidence that it fails there); for `crop`
    passes the original store, so they stay flat (what that approximation leaves out). Columns: kind,
    darken, perturbation, n, face_rate(_low, _high), pose_rate(_low, _high), luma_mean, face_luma_mean.
    """
    out = []
    for k, rows in _by_kind(data, kind):
        clips = _same_clips(rows.drop_duplicates(["perturbation", "fold", "clip_id"]))
        for (strength, pert), group in clips.groupby(["darken", "perturbation"], sort=True):
            row = {"kind": k, "darken": strength, "perturbation": pert, "n": len(group)}
            for column in RATE_COLUMNS:
                ci = mean_interval(group[column].to_numpy(dtype=float))
                row.update({column: ci["value"], f"{column}_low": ci["low"], f"{column}_high": ci["high"]})
            row.update(luma_mean=group["luma_mean"].mean(), face_luma_mean=group["face_luma_mean"].mean())
            out.append(row)
    columns = ["kind", "darken", "perturbation", "n", *[f"{c}{e}" for c in RATE_COLUMNS for e in ("", "_low", "_high")],
               "luma_mean", "face_luma_mean"]
    return pd.DataFrame(out, columns=columns)


def strongest_passes(data: pd.DataFrame, system: str | None = None) -> dict[str, str]:
    """Darkening kind -> perturbation label of its strongest pass (of `system` if given), scene first."""
    rows = data if system is None else data[data["system"] == system]
    out = {}
    for kind in KINDS:
        part = rows[rows["darken_kind"] == kind]
        if len(part):
            out[kind] = part.loc[part["darken"].idxmax(), "perturbation"]
    return out


def subset_scores(data: pd.DataFrame, low_light: Sequence[str] | None = None, perturbation: str = NATURAL,
                  darkest_quantile: float | None = None) -> pd.DataFrame:
    """Tidy UAR/WAR with intervals per system and subset of clips: `all`, `low-light` (the clip ids
    `low_light`; default: face luma below DARK_FACE_LUMA), `normal` (the rest) and, with
    `darkest_quantile`, `darkest q%` (relative to these clips).

    Columns: system, clips, n and INTERVAL_COLUMNS; a subset without clips has n = 0 and NaN scores.
    """
    rows = data[data["perturbation"] == perturbation]
    dark = set(dark_clips(rows) if low_light is None else low_light)
    subsets = {"all": rows, "low-light": rows[rows["clip_id"].isin(dark)],
               "normal": rows[~rows["clip_id"].isin(dark)]}
    if darkest_quantile is not None:
        darkest = set(low_light_clips(rows, darkest_quantile))
        subsets[f"darkest {darkest_quantile:.0%}"] = rows[rows["clip_id"].isin(darkest)]
    out = []
    for system in systems_in_order(rows):
        for name, part in subsets.items():
            group = part[part["system"] == system]
            scores = _scores(group) if len(group) else pd.Series({c: np.nan for c in INTERVAL_COLUMNS} | {"n": 0})
            out.append({"system": system, "clips": name, **scores.to_dict()})
    table = pd.DataFrame(out, columns=["system", "clips", *INTERVAL_COLUMNS])
    table["n"] = table["n"].astype(int)
    return table


def paired_comparisons(data: pd.DataFrame, baseline: str = "video", clip_ids: Sequence[str] | None = None,
                       perturbation: str = NATURAL) -> pd.DataFrame:
    """Each system against `baseline` on the clips both predicted (one pass, optionally some clips).

    Columns: system, n, uar, uar_baseline, uar_diff (system - baseline) with its paired bootstrap
    interval uar_diff_low/uar_diff_high and p-value p_boot, and McNemar's exact test: fixed (clips only
    the system gets right), broken (only the baseline), p_mcnemar. Empty when the baseline is alone.
    """
    out = []
    for system, both in _pairs(data, baseline, clip_ids, perturbation):
        y, pred, base = both["label"].to_numpy(), both["pred"].to_numpy(), both["pred_base"].to_numpy()
        diff = paired_difference(y, pred, base)
        test = mcnemar(pred == y, base == y)
        out.append({"system": system, "n": len(both),
                    "uar": classification_metrics(y, pred, classes_of(data))["uar"],
                    "uar_baseline": classification_metrics(y, base, classes_of(data))["uar"],
                    "uar_diff": diff["diff"], "uar_diff_low": diff["low"], "uar_diff_high": diff["high"],
                    "p_boot": diff["p"], "fixed": test["a_only"], "broken": test["b_only"], "p_mcnemar": test["p"]})
    return pd.DataFrame(out, columns=["system", "n", "uar", "uar_baseline", "uar_diff", "uar_diff_low",
                                      "uar_diff_high", "p_boot", "fixed", "broken", "p_mcnemar"])


def fix_table(data: pd.DataFrame, clip_ids: Sequence[str] | None = None, baseline: str = "video",
              perturbation: str = NATURAL) -> pd.DataFrame:
    """What each system fixes and breaks relative to `baseline` on the given clips and pass.

    fixed = clips the baseline gets wrong that the system gets right (`fixed_share`: of the baseline's
    wrong clips); broken = clips the baseline gets right that the system gets wrong (`broken_share`:
    of its right clips); net = fixed - broken, with the paired bootstrap interval of that count
    (net_low, net_high: clips x the paired WAR difference); p_mcnemar, McNemar's exact test on
    fixed vs broken, and `significant` (p < 0.05). `added` names the modalities the system adds.
    Sorted by net gain, largest first; empty when the baseline is alone.
    """
    base_mods = set(baseline.split(" ")[0].split("+"))
    out = []
    for system, both in _pairs(data, baseline, clip_ids, perturbation):
        y, pred, base = both["label"].to_numpy(), both["pred"].to_numpy(), both["pred_base"].to_numpy()
        right, base_right = pred == y, base == y
        test = mcnemar(right, base_right)
        gain = paired_difference(y, pred, base, metric="war")
        added = [m for m in system.split(" ")[0].split("+") if m not in base_mods]
        wrong_n, right_n = int((~base_right).sum()), int(base_right.sum())
        out.append({
            "system": system, "added": "+" + "+".join(added) if added else "(none)", "n": len(both),
            "baseline_wrong": wrong_n, "fixed": test["a_only"],
            "fixed_share": test["a_only"] / wrong_n if wrong_n else np.nan,
            "baseline_right": right_n, "broken": test["b_only"],
            "broken_share": test["b_only"] / right_n if right_n else np.nan,
            # n x the WAR difference is the net count of a resample; interpolated quantiles are rounded back
            "net": test["a_only"] - test["b_only"], "net_low": _round(len(both) * gain["low"]),
            "net_high": _round(len(both) * gain["high"]), "p_mcnemar": test["p"],
            "significant": test["p"] < SIGNIFICANCE,
        })
    table = pd.DataFrame(out, columns=FIX_COLUMNS)
    return table.sort_values("net", ascending=False, kind="stable").reset_index(drop=True)


FIX_COLUMNS = ["system", "added", "n", "baseline_wrong", "fixed", "fixed_share", "baseline_right", "broken",
               "broken_share", "net", "net_low", "net_high", "p_mcnemar", "significant"]
SIGNIFICANCE = 0.05  # McNemar's test level for the fix table's `significant` column


def fix_summary(data: pd.DataFrame, low_light: Sequence[str], baseline: str = "video",
                perturbation: str = NATURAL) -> pd.DataFrame:
    """The fix table on the low-light clips and on the rest, one block each (`clips` column), each
    sorted by net gain."""
    clips = data.loc[data["perturbation"] == perturbation, "clip_id"].unique()
    dark = set(low_light)
    parts = [fix_table(data, ids, baseline, perturbation).assign(clips=name)
             for name, ids in (("low-light", [c for c in clips if c in dark]),
                               ("rest", [c for c in clips if c not in dark]))]
    table = pd.concat(parts, ignore_index=True)
    return table[["clips", *FIX_COLUMNS]]


def _round(x: float) -> float:
    return float(np.round(x)) if np.isfinite(x) else np.nan


def _pairs(data: pd.DataFrame, baseline: str, clip_ids: Sequence[str] | None, perturbation: str):
    """(system, frame of label, pred, pred_base) for each system other than `baseline`, on the
    (fold, clip) pairs both predicted in `perturbation`, restricted to `clip_ids` if given."""
    rows = data[data["perturbation"] == perturbation]
    if clip_ids is not None:
        rows = rows[rows["clip_id"].isin(set(clip_ids))]
    if baseline not in set(data.loc[data["perturbation"] == perturbation, "system"]):
        raise DfewMMError(f"baseline system '{baseline}' has no predictions for pass '{perturbation}' "
                          f"(systems: {', '.join(systems_in_order(data))})")
    key = ["fold", "clip_id"]
    base = rows.loc[rows["system"] == baseline, key + ["label", "pred"]]
    # every system of the pass, so that a clip subset without clips still gives its (empty) row
    for system in systems_in_order(data[data["perturbation"] == perturbation]):
        if system != baseline:
            other = rows.loc[rows["system"] == system, key + ["pred"]]
            yield system, base.merge(other, on=key, suffixes=("_base", ""))


def per_class_recall(data: pd.DataFrame, clip_ids: Sequence[str] | None = None,
                     perturbation: str = NATURAL) -> pd.DataFrame:
    """Recall per class (columns, the dataset's class order) per system (rows); NaN where a class is absent."""
    rows = data[data["perturbation"] == perturbation]
    if clip_ids is not None:
        rows = rows[rows["clip_id"].isin(set(clip_ids))]
    table = {}
    for system in systems_in_order(rows):
        group = rows[rows["system"] == system]
        table[system] = classification_metrics(group["label"], group["pred"], classes_of(data))["per_class_recall"]
    return pd.DataFrame.from_dict(table, orient="index", columns=list(classes_of(data)))


def per_class_intervals(data: pd.DataFrame, clip_ids: Sequence[str] | None = None,
                        perturbation: str = NATURAL) -> pd.DataFrame:
    """Tidy per-class recall with counts: system, class, n (clips of the class), right, recall and its
    95% Jeffreys interval (recall_low, recall_high; NaN for absent classes): the exact quantiles of
    what the bootstrap of `dfew_mm.stats` draws for one class."""
    rows = data[data["perturbation"] == perturbation]
    if clip_ids is not None:
        rows = rows[rows["clip_id"].isin(set(clip_ids))]
    out = []
    for system in systems_in_order(rows):
        group = rows[rows["system"] == system]
        for i, name in enumerate(classes_of(data)):
            members = group[group["label"] == i]
            n, right = len(members), int(members["correct"].sum())
            low, high = proportion_interval(right, n)
            out.append({"system": system, "class": name, "n": n, "right": right,
                        "recall": right / n if n else np.nan, "recall_low": low, "recall_high": high})
    return pd.DataFrame(out, columns=["system", "class", "n", "right", "recall", "recall_low", "recall_high"])


def class_counts(data: pd.DataFrame, clip_ids: Sequence[str] | None = None) -> pd.Series:
    """Number of distinct clips per true class (the dataset's class order), optionally among `clip_ids`."""
    rows = data.drop_duplicates(["fold", "clip_id"])
    if clip_ids is not None:
        rows = rows[rows["clip_id"].isin(set(clip_ids))]
    return rows["label_name"].value_counts().reindex(list(classes_of(data)), fill_value=0)


# -- modality reliance (`dfew_mm evaluate --attribution`) -------------------------------------------
def has_reliance(data: pd.DataFrame) -> bool:
    """Whether any prediction file of the folder was written with `--attribution`."""
    return any(c in data and data[c].notna().any() for c in RELIANCE_COLUMNS)


def reliance_table(data: pd.DataFrame, low_light: Sequence[str], perturbation: str = NATURAL) -> pd.DataFrame:
    """Mean reliance per system, clip subset (`low-light`, `normal`) and modality, with bootstrap intervals.

    reliance = p(predicted class | all modalities of the system) - p(predicted class | that modality
    masked): how much the model leaned on the modality for the clips of the subset. Columns: system,
    clips, modality, reliance, reliance_low, reliance_high, n. Only systems evaluated with
    `--attribution`; empty when there are none.
    """
    columns = ["system", "clips", "modality", "reliance", "reliance_low", "reliance_high", "n"]
    rows = data[data["perturbation"] == perturbation]
    dark = set(low_light)
    out = []
    for system in systems_in_order(rows):
        group = rows[rows["system"] == system]
        for name, part in (("low-light", group[group["clip_id"].isin(dark)]),
                           ("normal", group[~group["clip_id"].isin(dark)])):
            for column in RELIANCE_COLUMNS:
                if column not in part or not group[column].notna().any():
                    continue
                ci = mean_interval(part[column].to_numpy(dtype=float))
                mean, low, high = ci["value"], ci["low"], ci["high"]
                out.append({"system": system, "clips": name, "modality": column.removeprefix("reliance_"),
                            "reliance": mean, "reliance_low": low, "reliance_high": high,
                            "n": int(part[column].notna().sum())})
    return pd.DataFrame(out, columns=columns)


def plot_reliance(table: pd.DataFrame):
    """Bars of mean reliance per modality, low-light beside normal clips, one panel per system."""
    import matplotlib.pyplot as plt

    systems = systems_in_order(table)
    fig, axes = plt.subplots(1, len(systems), figsize=(5 * len(systems), 3.6), squeeze=False, sharey=True)
    for ax, system in zip(axes[0], systems):
        part = table[table["system"] == system]
        modalities = [m for m in ENCODERS if m in set(part["modality"])]
        x = np.arange(len(modalities))
        for shift, (name, colour) in zip((-0.2, 0.2), (("low-light", "tab:blue"), ("normal", "tab:orange"))):
            rows = part[part["clips"] == name].set_index("modality").reindex(modalities)
            value = rows["reliance"].to_numpy(float)
            err = [value - rows["reliance_low"].to_numpy(float), rows["reliance_high"].to_numpy(float) - value]
            n = int(rows["n"].max()) if rows["n"].notna().any() else 0
            ax.bar(x + shift, value, 0.4, yerr=err, capsize=3, color=colour, label=f"{name} (n={n})")
        ax.axhline(0, color="grey", linewidth=1)
        ax.set_xticks(x, modalities)
        ax.set_title(system)
        ax.set_ylabel("mean reliance, 95% CI")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def format_paired(table: pd.DataFrame) -> pd.DataFrame:
    """`paired_comparisons` for display: UARs and the difference in percent (points) with its interval."""
    return pd.DataFrame({
        "system": table["system"], "n": table["n"],
        "UAR": (100 * table["uar"]).round(1), "UAR baseline": (100 * table["uar_baseline"]).round(1),
        "difference [95% CI]": [f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]" for d, lo, hi in
                                zip(table["uar_diff"], table["uar_diff_low"], table["uar_diff_high"])],
        "p_boot": table["p_boot"], "fixed": table["fixed"], "broken": table["broken"],
        "p_mcnemar": table["p_mcnemar"]}).set_index("system")


def with_intervals(table: pd.DataFrame, index: str, columns: str, metric: str = "uar") -> pd.DataFrame:
    """A pivot of `metric` as '58.3 [41.2, 70.0]' strings (percent) for display."""
    cells = table.assign(cell=[format_interval(r[metric], r[f"{metric}_low"], r[f"{metric}_high"])
                               for _, r in table.iterrows()])
    return cells.pivot(index=index, columns=columns, values="cell")


def dark_examples(data: pd.DataFrame, system: str, n: int = 12) -> pd.DataFrame:
    """The `n` darkest clips with their true and predicted labels under `system` (unperturbed)."""
    rows = data[(data["perturbation"] == NATURAL) & (data["system"] == system)]
    return rows.sort_values("brightness", kind="stable").head(n)[
        ["clip_id", "brightness", "label_name", "pred_name", "correct"]].reset_index(drop=True)


def pass_examples(data: pd.DataFrame, examples: pd.DataFrame, perturbation: str, system: str) -> pd.DataFrame:
    """The clips of `examples` (from `dark_examples`) as `system` predicted them in another pass, e.g. on
    a scene-darkened store; `brightness` stays the natural one. Clips the pass lacks are left out."""
    rows = data[(data["perturbation"] == perturbation) & (data["system"] == system)]
    rows = rows.drop_duplicates("clip_id").set_index("clip_id")
    kept = examples[examples["clip_id"].isin(rows.index)]
    out = rows.loc[kept["clip_id"], ["label_name", "pred_name", "correct"]].reset_index()
    out.insert(1, "brightness", kept["brightness"].to_numpy())
    return out


def face_crop(store, clip_id: str) -> np.ndarray:
    """A representative face crop (S, S, 3) of a clip: the middle frame among those with a face."""
    arrays = store[clip_id]
    faces, mask = arrays["faces"], arrays["face_mask"]  # (T, S, S, 3), (T,)
    frames = np.flatnonzero(mask) if mask.any() else np.arange(len(faces))
    return faces[frames[len(frames) // 2]]


# -- figures ---------------------------------------------------------------------------------
# Error bars and bands are the 95% bootstrap intervals of the tables above.
def _offsets(count: int, spread: float = 0.25) -> np.ndarray:
    """Small x shifts so that the error bars of several systems at one x do not overlap."""
    return np.linspace(-spread / 2, spread / 2, count) if count > 1 else np.zeros(1)


def plot_brightness_bins(table: pd.DataFrame, dark_luma: float | None = DARK_FACE_LUMA):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    order = systems_in_order(table)
    labels = table.drop_duplicates("bin").set_index("bin")["luma_range"].sort_index()
    for ax, metric in zip(axes, ("uar", "war")):
        for shift, system in zip(_offsets(len(order)), order):
            part = table[table["system"] == system].sort_values("bin")
            y = 100 * part[metric]
            yerr = [y - 100 * part[f"{metric}_low"], 100 * part[f"{metric}_high"] - y]
            ax.errorbar(part["bin"] + shift, y, yerr=yerr, marker="o", capsize=3, label=system)
        ax.set_xticks(labels.index, [f"Q{b}\n{r}" for b, r in labels.items()])
        ax.set_xlabel("face-luma quantile bin (1 = darkest; luma range)"
                      + (f"; dark = luma < {dark_luma:g}" if dark_luma is not None else ""))
        ax.set_ylabel(f"{metric.upper()} (%), 95% CI")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].set_title("UAR by brightness")
    axes[1].set_title("WAR by brightness")
    axes[1].legend(title="modalities", fontsize=8)
    fig.tight_layout()
    return fig


def _kind_legend(fig, kinds: Sequence[str], **kwargs) -> None:
    """A legend of line styles below the panels: which darkening kind each line shows."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="black", linestyle=KIND_LINES[k], marker="o" if k != "crop" else "s",
                      label=KIND_NAMES[k]) for k in kinds]
    fig.legend(handles=handles, title="darkening", fontsize=8, title_fontsize=8, **kwargs)


def plot_darkening(curves: pd.DataFrame):
    """Darkening curves from `darkening_curves`: one colour per system, solid lines for scene-level
    darkening (detection re-run on dark frames), dashed for crop-level (the approximation)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.4), sharey=True)
    kinds = [k for k in (*KINDS, "none") if (curves["kind"] == k).any()]
    order = systems_in_order(curves) if len(curves) else []
    colours = {s: f"C{i % 10}" for i, s in enumerate(order)}
    for ax, metric in zip(axes, ("uar", "war")):
        for kind in kinds:
            for system in order:
                part = curves[(curves["kind"] == kind) & (curves["system"] == system)].sort_values("darken")
                if not len(part):
                    continue
                ax.plot(part["darken"], 100 * part[metric], color=colours[system], linestyle=KIND_LINES[kind],
                        marker="s" if kind == "crop" else "o", label=system)
                ax.fill_between(part["darken"], 100 * part[f"{metric}_low"], 100 * part[f"{metric}_high"],
                                color=colours[system], alpha=0.12 if kind != "crop" else 0.06, linewidth=0)
        ax.set_xlabel("darkening strength (0 = original frames)")
        ax.set_ylabel(f"{metric.upper()} (%), band = 95% CI")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.set_title(f"{metric.upper()} under simulated low light")
    if order:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=colours[s], label=s) for s in order]
        fig.legend(handles=handles, title="modalities", fontsize=8, title_fontsize=8, loc="lower right",
                   ncol=min(3, len(order)))
        _kind_legend(fig, kinds, loc="lower left")
    fig.suptitle("solid: scene level (frames darkened before detection)   dashed: crop level "
                 "(stored face crops darkened; fast approximation)" if len(kinds) > 1 else
                 f"darkening: {KIND_NAMES[kinds[0]]}" if kinds else "no darkening", fontsize=10)
    fig.tight_layout(rect=(0, 0.15, 1, 0.95))
    return fig


def plot_detection_rates(rates: pd.DataFrame):
    """Face and pose detection rates against darkening strength from `detection_rates`, per kind
    (solid: scene level, dashed: crop level, which reads the original detections), 95% CI bands."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    kinds = [k for k in (*KINDS, "none") if (rates["kind"] == k).any()]
    for ax, column, title in zip(axes, RATE_COLUMNS, ("face detection rate", "pose detection rate")):
        for kind in kinds:
            part = rates[rates["kind"] == kind].sort_values("darken")
            ax.plot(part["darken"], 100 * part[column], color="C0" if kind != "crop" else "C7",
                    linestyle=KIND_LINES[kind], marker="s" if kind == "crop" else "o")
            ax.fill_between(part["darken"], 100 * part[f"{column}_low"], 100 * part[f"{column}_high"],
                            color="C0" if kind != "crop" else "C7", alpha=0.15, linewidth=0)
            for x, y, n in zip(part["darken"], 100 * part[column], part["n"]):
                if kind != "crop" or kind == kinds[0]:  # the shared strength-0 point is labelled once
                    ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(0, 6), fontsize=7,
                                ha="center")
        ax.set_xlabel("darkening strength (0 = original frames)")
        ax.set_ylabel("sampled frames with a detection (%), band = 95% CI")
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
        ax.set_title(title)
    if kinds:
        _kind_legend(fig, kinds, loc="lower center", ncol=len(kinds))
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def plot_per_class(table: pd.DataFrame, title: str = "per-class recall on low-light clips"):
    """Bars of recall per class and system with their intervals, from `per_class_intervals`."""
    import matplotlib.pyplot as plt

    classes = list(dict.fromkeys(table["class"]))  # per_class_intervals lists them in the dataset's order
    fig, ax = plt.subplots(figsize=(max(11, 1.2 * len(classes)), 4))
    order = systems_in_order(table) if len(table) else []
    width = 0.8 / max(1, len(order))
    x = np.arange(len(classes))
    for i, system in enumerate(order):
        part = table[table["system"] == system].set_index("class").reindex(classes)
        recall = 100 * part["recall"].to_numpy(dtype=float)
        yerr = [recall - 100 * part["recall_low"].to_numpy(dtype=float),
                100 * part["recall_high"].to_numpy(dtype=float) - recall]
        ax.bar(x + i * width - 0.4 + width / 2, recall, width, yerr=yerr, capsize=2, label=system,
               error_kw={"elinewidth": 0.8})
    counts = table.drop_duplicates("class").set_index("class")["n"].reindex(classes, fill_value=0)
    for xi in x[counts.to_numpy() == 0]:
        ax.text(xi, 2, "absent", ha="center", fontsize=8, color="grey")
    ax.set_xticks(x, [f"{c}\n(n={counts[c]})" for c in classes])
    ax.set_xlabel("class (n = clips of the class); no bar above a present class: recall 0")
    ax.set_ylabel("recall (%), 95% CI")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    if order:
        ax.legend(title="modalities", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_paired(tables: dict[str, pd.DataFrame], baseline: str = "video"):
    """Forest plot of the paired UAR differences with `baseline` (one panel per table of
    `paired_comparisons`, e.g. per clip subset); a bar crossing 0 is no evidence of a difference."""
    import matplotlib.pyplot as plt

    heights = [1 + 0.45 * max(1, len(t)) for t in tables.values()]
    fig, axes = plt.subplots(len(tables), 1, figsize=(8, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (name, table) in zip(axes[:, 0], tables.items()):
        y = np.arange(len(table))[::-1]
        diff = 100 * table["uar_diff"].to_numpy(dtype=float)
        err = [diff - 100 * table["uar_diff_low"].to_numpy(dtype=float),
               100 * table["uar_diff_high"].to_numpy(dtype=float) - diff]
        ax.errorbar(diff, y, xerr=err, fmt="o", capsize=3)
        ax.axvline(0, color="grey", linestyle="--", linewidth=1)
        ax.set_yticks(y, [f"{s} (n={n})" for s, n in zip(table["system"], table["n"])])
        ax.set_xlabel(f"UAR difference with {baseline} (points), 95% CI")
        ax.set_title(name)
        ax.grid(axis="x", alpha=0.3)
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
