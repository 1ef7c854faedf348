"""dfew_mm: multimodal (face video, body pose, audio) emotion recognition on DFEW."""

__version__ = "0.1.0"
