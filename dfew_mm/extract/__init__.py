"""Feature extraction: decode -> face crops -> pose -> audio fbank -> quality stats -> feature store.

Modules: options (ExtractOptions, the settings), assets (MediaPipe model files), decode (decord,
PyAV fallback), images, face, face_frames (faces from a dataset's face frame folders, `--face-source`),
pose, audio, quality, blendshapes (optional), worker (one clip), pool (supervised worker processes),
run (listing, sharding, resume).
"""
