"""The low-light notebook: committed without outputs, executed headless on the demo's predictions."""

from __future__ import annotations

import nbformat
import pytest

from dfew_mm.analysis import execute_notebook, fix_table, load_predictions, shipped_notebook

FIGURES = ("brightness_bins", "darkening_curves", "per_class_recall_low_light", "dark_face_crops")


def test_notebook_is_committed_clean_and_parameterised():
    nb = nbformat.reads(shipped_notebook().read_text(), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1
    assert "predictions_dir" in next(c.source for c in code if "parameters" in c.metadata.get("tags", []))


@pytest.mark.slow
def test_demo_report_has_every_figure(demo_run):
    report = demo_run["out"] / "report"
    nb = nbformat.read(report / "low_light_analysis.ipynb", as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= len(FIGURES)
    for name in FIGURES:
        assert (report / "figures" / f"{name}.png").stat().st_size > 5000, name
    html = (report / "low_light_analysis.html").read_text()
    assert "Darkening curves" in html and "data:image/png;base64" in html


@pytest.mark.slow
def test_notebook_runs_on_a_subset_of_predictions(demo_run, tmp_path):
    """Re-executed on the face-only predictions alone: no fix table baseline pairs, still no error."""
    folder = tmp_path / "preds"
    folder.mkdir()
    for path in (demo_run["out"] / "predictions").glob("video__video.*"):
        (folder / path.name).write_bytes(path.read_bytes())
    notebook, html = execute_notebook(folder, tmp_path / "report", low_light_quantile=0.5)
    assert html.is_file() and (tmp_path / "report" / "figures" / "darkening_curves.png").is_file()
    data = load_predictions(folder)
    assert fix_table(data).empty  # a baseline with nothing to compare against gives an empty table


@pytest.mark.slow
def test_report_command(demo_run, tmp_path, capsys):
    from dfew_mm.cli import main

    out = demo_run["out"]
    assert main(["report", str(out / "predictions"), "--store", str(out / "features"), "--out", str(tmp_path)]) == 0
    html = tmp_path / "low_light_analysis.html"
    assert str(html) in capsys.readouterr().out
    assert html.stat().st_size > 10_000 and "Traceback" not in html.read_text()
    assert len(list((tmp_path / "figures").glob("*.png"))) >= 4


@pytest.mark.parametrize("kinds", [("crop", "scene"), ("scene",), ()], ids=["both", "scene", "neither"])
def test_notebook_runs_with_either_kind_of_darkening(tmp_path, kinds):
    """Hand-made predictions: both kinds of darkening, scene level alone, no darkening; with stores
    (an original and a scene-darkened one) for the crop grids."""
    import json

    from _predictions import write_both_kinds
    from _train_stores import make_store
    from dfew_mm.extract.options import ExtractOptions

    _, store = make_store(tmp_path / "original", clips=8, frames=4, face=32)
    _, dark_store = make_store(tmp_path / "dark", clips=8, frames=4, face=32, seed=1)
    settings = ExtractOptions(frames=4, face_size=32, darken=1.0).to_dict()
    (dark_store / "extract_settings.json").write_text(json.dumps(settings))
    (tmp_path / "preds").mkdir()
    folder = write_both_kinds(tmp_path / "preds", store, dark_store, kinds)
    notebook, html = execute_notebook(folder, tmp_path / "report")
    nb = nbformat.read(notebook, as_version=4)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    figures = {p.stem for p in (tmp_path / "report" / "figures").glob("*.png")}
    assert {"darkening_curves", "detection_rates", "dark_face_crops"} <= figures
    assert ("dark_face_crops_scene" in figures) == ("scene" in kinds)
    text = html.read_text()
    for kind in ("scene", "crop"):
        assert (f"strongest {kind}-level darkening ({'scene' if kind == 'scene' else 'darken'}:1)" in text) == (
            kind in kinds)
