"""Layers import only what they use: reading predictions, the analysis, the report and the CLI's start-up
never load torch or transformers (a fresh interpreter each, so nothing imported by other tests counts)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import nbformat

from dfew_mm.analysis import shipped_notebook
from dfew_mm.models.encoders import ENCODERS

HEAVY = ("torch", "transformers", "timm", "torchvision", "torchaudio")


def loaded_after(code: str) -> list[str]:
    """The HEAVY modules in sys.modules after `code` runs in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_analysis_predictions_and_metrics_import_without_torch():
    assert loaded_after("import dfew_mm.analysis, dfew_mm.predictions, dfew_mm.metrics, dfew_mm.stats") == []


def test_the_notebooks_imports_leave_torch_out():
    """The report's kernel runs the notebook's own import lines."""
    nb = nbformat.reads(shipped_notebook().read_text(), as_version=4)
    lines = [line for cell in nb.cells if cell.cell_type == "code" for line in cell.source.splitlines()
             if line.startswith(("import ", "from "))]
    assert any("dfew_mm" in line for line in lines)
    assert loaded_after("\n".join(lines)) == []


def test_modality_names_come_without_the_encoder_classes():
    assert loaded_after("from dfew_mm.models.encoders import resolve_modalities\nresolve_modalities('video,pose')") == []
    assert loaded_after("from dfew_mm.models.encoders import ENCODERS\nENCODERS['pose']") != []  # a class loads torch


def test_every_registry_line_names_its_modality():
    for name in list(ENCODERS):
        assert ENCODERS[name].name == name


def test_cli_parser_and_report_start_without_torch(tmp_path):
    """`dfew_mm --help`-level start-up and a whole `dfew_mm report` run, in one process."""
    from _predictions import write_both_kinds

    (tmp_path / "preds").mkdir()
    folder = write_both_kinds(tmp_path / "preds", kinds=("crop",))
    assert loaded_after("from dfew_mm.cli import build_parser\nbuild_parser()") == []
    code = textwrap.dedent(f"""
        from dfew_mm.cli import main
        assert main(["report", {str(folder)!r}, "--out", {str(tmp_path / "report")!r}, "--no-progress"]) == 0
    """)
    assert loaded_after(code) == []
    assert (tmp_path / "report" / "low_light_analysis.html").is_file()
