"""Experiment configs (YAML), shipped inside the package as dfew_mm.configs."""
