"""Signal and extraction constants, in one place; derived values are computed, units in comments."""

# Class names and their number belong to each dataset (dfew_mm.datasets): nothing here names a class.

# Audio features: 128-bin Kaldi log-mel filterbank as used by the AST AudioSet checkpoints.
SAMPLE_RATE = 16_000  # Hz, mono
HOP_MS = 10  # ms between filterbank frames
WINDOW_MS = 25  # ms analysis window
N_MELS = 128  # filterbank bins
HOP_SAMPLES = SAMPLE_RATE * HOP_MS // 1000  # 160 samples
AUDIO_FRAMES_PER_SECOND = 1000 // HOP_MS  # 100 filterbank frames per second
WAVEFORM_ARRAY = "waveform"  # (N,) int16 16 kHz mono samples per clip, for waveform speech encoders
WAVEFORM_SCALE = 32768.0  # int16 sample -> float in [-1, 1)
# AST AudioSet normalisation statistics (Gong et al. 2021), applied before the encoder.
AST_FBANK_MEAN = -4.2677393
AST_FBANK_STD = 4.5689974

# Video sampling defaults.
DEFAULT_FRAMES = 16  # frames sampled uniformly per clip
DEFAULT_FACE_SIZE = 112  # px, square face crop side
# The face source (`--face-source`) that detects faces in the original clips; the others are the
# face frame folders a dataset distributes (dfew_mm.datasets.frame_folders).
FACE_SOURCE_DETECT = "detect"
# Bounds: an extraction worker holds T decoded frames (a 1080p frame is 6.2 MB: 3.2 GB at T=512,
# enough for every frame of most DFEW clips); a stored clip holds T face crops of S x S x 3 bytes.
MAX_FRAMES = 512
MIN_FACE_SIZE, MAX_FACE_SIZE = 8, 512  # px
MAX_AUDIO_FRAMES = 8192  # filterbank frames fed to the model (10 ms each: 82 s)

# Body pose: MediaPipe PoseLandmarker topology.
POSE_LANDMARK_NAMES = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index",
    "left_thumb", "right_thumb", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)
N_POSE_LANDMARKS = len(POSE_LANDMARK_NAMES)  # 33
POSE_CHANNELS = 4  # x, y, z, visibility (x, y in image widths and heights from the top left)
LEFT_SHOULDER, RIGHT_SHOULDER = POSE_LANDMARK_NAMES.index("left_shoulder"), POSE_LANDMARK_NAMES.index("right_shoulder")
LEFT_HIP, RIGHT_HIP = POSE_LANDMARK_NAMES.index("left_hip"), POSE_LANDMARK_NAMES.index("right_hip")
# MediaPipe FaceLandmarker blendshape scores, in the model's output order (store array `blendshapes`)
BLENDSHAPE_NAMES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)
N_BLENDSHAPES = len(BLENDSHAPE_NAMES)  # 52

# BT.601 luma weights for R, G, B.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)

# Absolute low-light threshold on a clip's mean face-crop luma (BT.601, 0..255, gamma-encoded as
# stored): "dark" means below it, in every fold and store alike (quantile bins are relative to one
# set of clips). A face exposed like middle grey sits near luma 118; at luma 60 it received about a
# quarter of that light ((60 / 118) ** 2.2 ≈ 0.23 with a 2.2 display gamma), i.e. two stops under,
# where 8-bit video keeps only a few dozen grey levels across the face and sensor noise and
# compression dominate expression detail. The synthetic low-light clips sit at 18-32, the others at 118-165.
DARK_FACE_LUMA = 60.0
