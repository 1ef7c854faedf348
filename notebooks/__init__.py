"""Analysis notebooks, shipped inside the package as dfew_mm.notebooks."""
