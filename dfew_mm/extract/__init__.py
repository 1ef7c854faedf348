"""Feature extraction: decode -> face crops -> pose -> audio fbank -> quality stats -> feature store.

Modules: options (ExtractOptions, the settings), assets (MediaPipe model files), decode (decord,
PyAV fallback), images, face, pose, audio, quality, blendshapes (optional), worker (one clip),
pool (supervised worker processes), run (listing, sharding, resume).
"""
