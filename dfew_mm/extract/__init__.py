"""Feature extraction: decode -> face crops -> pose -> audio fbank -> quality stats -> feature store.

Modules: assets (MediaPipe model files), decode (decord, PyAV fallback), images, face, pose, audio,
quality, blendshapes (optional), worker (one clip), run (listing, sharding, resume, processes).
"""

from dfew_mm.extract.run import RunSummary, list_clips, parse_shard, run_extraction, select_clips
from dfew_mm.extract.worker import ClipExtractor, ExtractOptions

__all__ = ["ClipExtractor", "ExtractOptions", "RunSummary", "list_clips", "parse_shard", "run_extraction",
           "select_clips"]
