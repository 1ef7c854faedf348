"""DFEW index and folds, face frame folders, the feature store and the torch dataset over it."""

from dfew_mm.data.store import FeatureStore

__all__ = ["FeatureStore"]
