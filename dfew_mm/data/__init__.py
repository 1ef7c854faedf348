"""The feature store, a fold's train/val/test clips in it, and the torch dataset over it (the datasets' own
files, folds and face frame folders are in dfew_mm.datasets)."""

from dfew_mm.data.store import FeatureStore

__all__ = ["FeatureStore"]
