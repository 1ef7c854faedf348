"""DFEW index and folds, the feature store, torch datasets, synthetic data."""

from dfew_mm.data.store import FeatureStore

__all__ = ["FeatureStore"]
