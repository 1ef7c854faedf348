"""Signal and dataset constants, in one place; derived values are computed, units in comments."""

# DFEW classes in label order: the split CSVs use 1-based labels, the library uses 0-based indices.
CLASSES = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
NUM_CLASSES = len(CLASSES)
MODALITIES = ("video", "pose", "audio")

# Audio features: 128-bin Kaldi log-mel filterbank as used by the AST AudioSet checkpoints.
SAMPLE_RATE = 16_000  # Hz, mono
HOP_MS = 10  # ms between filterbank frames
WINDOW_MS = 25  # ms analysis window
N_MELS = 128  # filterbank bins
HOP_SAMPLES = SAMPLE_RATE * HOP_MS // 1000  # 160 samples
AUDIO_FRAMES_PER_SECOND = 1000 // HOP_MS  # 100 filterbank frames per second
# AST AudioSet normalisation statistics (Gong et al. 2021), applied before the encoder.
AST_FBANK_MEAN = -4.2677393
AST_FBANK_STD = 4.5689974

# Video sampling defaults.
DEFAULT_FRAMES = 16  # frames sampled uniformly per clip
DEFAULT_FACE_SIZE = 112  # px, square face crop side

# Body pose: MediaPipe PoseLandmarker topology.
N_POSE_LANDMARKS = 33
POSE_CHANNELS = 4  # x, y, z, visibility
LEFT_SHOULDER, RIGHT_SHOULDER = 11, 12
LEFT_HIP, RIGHT_HIP = 23, 24
N_BLENDSHAPES = 52  # MediaPipe FaceLandmarker blendshape scores

# BT.601 luma weights for R, G, B.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
