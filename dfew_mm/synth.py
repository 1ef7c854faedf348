"""Synthetic datasets (`dfew_mm synth`): real H.264/AAC clips of a drawn person, in a dataset's exact layout.

The layout, the clip names and the split files are the dataset's (dfew_mm.datasets: `synth_clip`,
`format_split`): DFEW's and MAFW's original clips, the face frame folders a dataset distributes (the
drawn face cut out of each frame: DFEW's with `face_frames`, FERV39k's always, as they are all it
ships), with the dataset's protocol (k folds, each clip tested in exactly
one; or one fixed split testing a fifth of the clips). Class k of a dataset is shown by cue k below.

Every clip carries its class through three independent cues, so each modality can be tested:
  face   expression (mouth curve and opening, brow angle, eye opening) that MediaPipe detects;
  pose   arm posture and head tilt of a drawn upper body;
  audio  a voiced tone whose pitch, syllable rate, glide and vibrato depend on the class.
Each cue is shown with a per-clip strength and, with probability `confusion`, shows another
class, so no single modality is perfect and fusion has something to add. `cues` picks which
modalities carry the label at all: the others show an independent random class per clip (still a
clean face, posture or voice, only unrelated to the label), so that a fusion model can be checked
where the right answer is known: it must find the modality that carries the signal. A `dark_share` of the
clips is filmed in low light (gain, gamma, sensor noise): the small facial strokes drown in
noise and compression while the large body shapes and the audio survive.
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dfew_mm.datasets import DEFAULT_DATASET, get_dataset
from dfew_mm.errors import ConfigError

# px; both multiples of 16: with a partial macroblock row x264 reads uninitialised padding and
# the same frames no longer encode bit-exactly
WIDTH, HEIGHT = 384, 288
HEAD_HEIGHT = 40  # px; the whole body spans ~8 head heights, so hips and knees are in frame
FPS = 24
AUDIO_RATE = 44_100  # Hz, like the DFEW originals
GROUPS = 5  # synthetic clips fall into 5 stratified groups: fold k tests group k (a fixed split tests group 1)
# Face frame folders like DFEW's: square crops of this side around the face (the face box's longer side
# x (1 + margin)), and the number of frames in a sparse folder (one that does not hold every frame).
FACE_FRAME_SIZE = 224  # px
FACE_FRAME_MARGIN = 0.3
SPARSE_FACE_FRAMES = 16
CUES = ("face", "pose", "audio")  # the modalities that can carry the label

# Cue k shows class k of the dataset (at most len(FACE_CUES) classes). The first seven were drawn as
# DFEW's classes in its label order (a smile, a frown, rest, a scowl, a gape, a sneer, a fearful gape);
# the others are further distinct shapes. Face: mouth curve (+ smile), mouth open (0..1), brow tilt
# (+ inner ends down, scowling), brow raise (px), eye open (1 normal), left brow tilt factor. Pose: wrist
# targets relative to the shoulders in shoulder widths (x outward, y down), head tilt (px down).
FACE_CUES = (
    dict(curve=+1.0, open=0.25, tilt=0.0, raise_=0.0, eye=1.0, asym=1.0),
    dict(curve=-0.9, open=0.0, tilt=-0.8, raise_=2.0, eye=0.7, asym=1.0),
    dict(curve=0.0, open=0.0, tilt=0.0, raise_=0.0, eye=1.0, asym=1.0),
    dict(curve=-0.3, open=0.45, tilt=+1.0, raise_=-3.0, eye=0.8, asym=1.0),
    dict(curve=0.0, open=1.0, tilt=0.0, raise_=8.0, eye=1.5, asym=1.0),
    dict(curve=-0.6, open=0.15, tilt=+0.5, raise_=-2.0, eye=0.5, asym=1.4),
    dict(curve=-0.4, open=0.6, tilt=-1.0, raise_=6.0, eye=1.4, asym=1.0),
    dict(curve=+0.5, open=0.0, tilt=+0.3, raise_=-1.0, eye=0.6, asym=1.8),
    dict(curve=-0.2, open=0.3, tilt=-0.5, raise_=4.0, eye=1.2, asym=1.0),
    dict(curve=-0.7, open=0.35, tilt=-0.3, raise_=3.0, eye=0.9, asym=1.0),
    dict(curve=-0.5, open=0.0, tilt=0.0, raise_=-1.0, eye=0.6, asym=1.0),
)
POSE_CUES = (  # (left wrist dx, dy), (right wrist dx, dy) in shoulder-relative units; head drop px
    ((1.0, -1.6), (1.0, -1.6), 0.0),
    ((0.1, 1.9), (0.1, 1.9), 14.0),
    ((0.3, 1.9), (0.3, 1.9), 0.0),
    ((0.2, 0.4), (0.2, 0.4), 4.0),
    ((0.1, -1.2), (0.1, -1.2), -4.0),
    ((1.9, 0.0), (0.3, 1.9), 6.0),
    ((-0.7, 0.6), (-0.7, 0.6), 8.0),
    ((1.5, 0.8), (1.5, 0.8), 0.0),
    ((0.6, -0.5), (0.6, -0.5), 2.0),
    ((1.3, -0.4), (0.3, 1.9), 10.0),
    ((0.3, 1.9), (1.6, -1.0), -2.0),
)
AUDIO_CUES = (  # f0 (Hz), syllables/s, glide (octaves over a syllable), vibrato depth, loudness
    dict(f0=260.0, rate=5.0, glide=+0.3, vibrato=0.0, gain=0.6),
    dict(f0=130.0, rate=2.0, glide=-0.2, vibrato=0.0, gain=0.25),
    dict(f0=180.0, rate=3.5, glide=0.0, vibrato=0.0, gain=0.4),
    dict(f0=210.0, rate=6.5, glide=-0.1, vibrato=0.0, gain=0.9),
    dict(f0=300.0, rate=2.5, glide=+0.8, vibrato=0.0, gain=0.7),
    dict(f0=150.0, rate=3.0, glide=-0.5, vibrato=0.0, gain=0.45),
    dict(f0=280.0, rate=4.5, glide=0.0, vibrato=0.06, gain=0.5),
    dict(f0=240.0, rate=3.0, glide=-0.3, vibrato=0.0, gain=0.5),
    dict(f0=230.0, rate=5.5, glide=+0.1, vibrato=0.04, gain=0.45),
    dict(f0=165.0, rate=2.5, glide=-0.4, vibrato=0.02, gain=0.35),
    dict(f0=195.0, rate=4.0, glide=+0.5, vibrato=0.0, gain=0.3),
)
REST_VOICE = AUDIO_CUES[2]  # a weak cue is this voice moved part of the way towards its class's
MAX_CLASSES = len(FACE_CUES)


@dataclass(frozen=True)
class SynthConfig:
    clips: int = 60
    seed: int = 0
    dark_share: float = 0.3  # share of low-light clips
    seconds: float = 2.0
    confusion: float = 0.12  # per modality: chance that a clip shows another class's cue
    dark_gain: tuple[float, float] = (0.18, 0.28)  # low-light exposure gain range
    dark_noise: float = 7.0  # sensor noise std in 0..255 after the gain
    # modalities whose cue shows the label (a subset of CUES); the others show a random class per clip
    cues: tuple[str, ...] = CUES
    face_frames: bool = False  # also write its face frame folders (DFEW: Clip/clip_224x224[_16f]/<id>/<n>.jpg)
    originals: bool = True  # write the original clips (False: face frames and split files only)
    dataset: str = DEFAULT_DATASET  # whose layout, classes and protocol (dfew_mm.datasets)

    def __post_init__(self):
        object.__setattr__(self, "cues", parse_cues(self.cues))
        dataset = get_dataset(self.dataset)
        if len(dataset.classes) > MAX_CLASSES:
            raise ConfigError(f"{self.dataset} has {len(dataset.classes)} classes; synthetic data draws at most "
                              f"{MAX_CLASSES}")
        if self.face_frames and not dataset.face_sources:
            raise ConfigError(f"{dataset.title} distributes no face frames to write")
        if not (self.writes_originals or self.writes_frames):
            raise ConfigError("a synthetic copy needs its original clips, its face frames or both")

    @property
    def n_classes(self) -> int:
        return len(get_dataset(self.dataset).classes)

    @property
    def writes_originals(self) -> bool:
        return self.originals and bool(get_dataset(self.dataset).clip_dir)

    @property
    def writes_frames(self) -> bool:
        """The face frames, when asked or when they are all the dataset distributes (FERV39k)."""
        dataset = get_dataset(self.dataset)
        return bool(dataset.face_sources) and (self.face_frames or not dataset.clip_dir)


def parse_cues(cues: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """'audio' or 'face,pose' or a sequence -> checked tuple in CUES order; unknown names list the valid ones."""
    names = [n.strip() for n in cues.split(",")] if isinstance(cues, str) else [str(n).strip() for n in cues]
    names = [n for n in names if n]
    unknown = [n for n in names if n not in CUES]
    if unknown or not names:
        raise ConfigError(f"unknown cue {', '.join(unknown) or '(none given)'}: valid cues are {', '.join(CUES)} "
                          "(any non-empty subset, comma-separated)")
    return tuple(c for c in CUES if c in names)


@dataclass(frozen=True)
class ClipSpec:
    clip_id: int
    label: int  # 0-based
    dark: bool
    face_class: int  # the class each modality shows (== label unless confused)
    pose_class: int
    audio_class: int
    strength: float  # cue strength 0.5..1
    seed: int


def plan_clips(cfg: SynthConfig) -> list[ClipSpec]:
    """Balanced labels, a fixed dark share, and per-modality confusions, all from the seed."""
    rng = np.random.default_rng(cfg.seed)
    n_classes = cfg.n_classes
    labels = np.arange(cfg.clips) % n_classes
    rng.shuffle(labels)
    dark = np.zeros(cfg.clips, bool)
    dark[rng.permutation(cfg.clips)[: round(cfg.dark_share * cfg.clips)]] = True

    def shown(label: int, cue: str) -> int:
        if cue not in cfg.cues:  # label-independent: a class drawn for this clip alone
            return int(rng.integers(n_classes))
        if rng.random() < cfg.confusion:
            return int(rng.choice([c for c in range(n_classes) if c != label]))
        return int(label)

    return [
        ClipSpec(i + 1, int(lab), bool(dark[i]), shown(lab, "face"), shown(lab, "pose"), shown(lab, "audio"),
                 float(rng.uniform(0.6, 1.0)), int(rng.integers(2**31)))
        for i, lab in enumerate(labels)
    ]


# -- drawing ---------------------------------------------------------------------------------
def _draw_person(draw, look: dict, face: dict, pose: tuple, s: float,
                 t: float) -> tuple[float, float, float, float]:
    """One frame of a standing person, sized in head heights `u`; `s` scales the cues, `t` (0..1)
    animates them. Full-body proportions (hips and knees in frame) are what BlazePose expects.
    Returns the face's box x1, y1, x2, y2 in px."""
    u = HEAD_HEIGHT * look["scale"]
    k = u / 68  # facial strokes were designed on a 68 px head
    cx = WIDTH / 2 + look["dx"] + 0.1 * u * math.sin(2 * math.pi * 1.4 * t)
    top = 0.35 * u + look["dy"]
    head = (cx, top + 0.5 * u + pose[2] * s * k)  # centre of the face; pose[2] drops the head
    hw, hh = 0.4 * u, 0.5 * u
    shoulder_y, half = top + 1.3 * u, 0.95 * u
    hip_y, hip_half = shoulder_y + 2.6 * u, 0.6 * u
    skin, shirt, hair, trousers = look["skin"], look["shirt"], look["hair"], look["trousers"]

    for side in (-1, 1):  # legs, then torso and neck
        hip_x = cx + side * hip_half * 0.6
        draw.line([(hip_x, hip_y - 0.1 * u), (hip_x + side * 0.1 * u, hip_y + 1.8 * u),
                   (hip_x + side * 0.1 * u, hip_y + 3.6 * u)], fill=trousers, width=int(0.5 * u))
    draw.polygon([(cx - half, shoulder_y), (cx + half, shoulder_y), (cx + hip_half, hip_y),
                  (cx - hip_half, hip_y)], fill=shirt)
    draw.rectangle([cx - 0.15 * u, head[1] + hh - 3, cx + 0.15 * u, shoulder_y + 2], fill=skin)
    # arms: shoulder -> elbow -> wrist; the wrist target comes from the pose cue, with a small wave
    wave = 0.15 * math.sin(2 * math.pi * 3 * t)
    rest = np.array([0.3, 1.9])
    for side, cue in ((-1, pose[0]), (+1, pose[1])):
        sx, sy = cx + side * half, shoulder_y + 0.1 * u
        target = rest + s * (np.array(cue) - rest) + np.array([0.0, wave])
        wx, wy = sx + side * target[0] * 1.2 * u, sy + target[1] * 1.25 * u
        ex, ey = (sx + wx) / 2 + side * 0.3 * u, (sy + wy) / 2 + 0.1 * u
        draw.line([(sx, sy), (ex, ey)], fill=shirt, width=int(0.35 * u))
        draw.line([(ex, ey), (wx, wy)], fill=skin, width=int(0.28 * u))
        draw.ellipse([wx - 0.17 * u, wy - 0.17 * u, wx + 0.17 * u, wy + 0.17 * u], fill=skin)

    # head: hair, face, ears
    draw.ellipse([head[0] - hw - 2 * k, head[1] - hh - 5 * k, head[0] + hw + 2 * k, head[1] + 0.2 * hh],
                 fill=hair)
    draw.ellipse([head[0] - hw, head[1] - hh, head[0] + hw, head[1] + hh], fill=skin)
    for side in (-1, 1):
        ear = head[0] + side * hw
        draw.ellipse([ear - 4 * k, head[1] - 5 * k, ear + 4 * k, head[1] + 7 * k], fill=skin)

    feature = look["feature"]
    eye_y = head[1] - 6 * k
    eye_open = 1 + s * (face["eye"] - 1)
    for side in (-1, 1):  # eyes with pupils, then brows
        ex = head[0] + side * 11 * k
        draw.ellipse([ex - 7 * k, eye_y - 4 * k * eye_open, ex + 7 * k, eye_y + 4 * k * eye_open],
                     fill=(235, 235, 235))
        draw.ellipse([ex - 3 * k, eye_y - 3 * k, ex + 3 * k, eye_y + 3 * k], fill=feature)
        brow_y = eye_y - (10 + s * face["raise_"]) * k
        tilt = s * face["tilt"] * 4 * k * (face["asym"] if side < 0 else 1)
        inner, outer = head[0] + side * 4 * k, head[0] + side * 18 * k
        draw.line([(inner, brow_y + tilt), (outer, brow_y - tilt)], fill=feature, width=max(2, round(3 * k)))
    draw.line([(head[0], head[1] - 2 * k), (head[0] - 2 * k, head[1] + 8 * k)], fill=feature, width=2)

    mouth_y, mw = head[1] + 18 * k, 12 * k
    curve = s * face["curve"] * 7 * k
    opening = s * face["open"] * 10 * k * (1 + 0.2 * math.sin(2 * math.pi * 3 * t))
    # image y grows downwards: a smile (curve > 0) lifts the corners above the centre
    pts = [(head[0] + x, mouth_y + curve * (1 - (x / mw) ** 2) - curve) for x in np.linspace(-mw, mw, 9)]
    if opening > 1.5:
        lower = [(x, y + opening * (1 - ((x - head[0]) / mw) ** 2)) for x, y in reversed(pts)]
        draw.polygon(pts + lower, fill=(90, 30, 35), outline=feature)
    else:
        draw.line(pts, fill=feature, width=max(2, round(3 * k)))
    return head[0] - hw, head[1] - hh, head[0] + hw, head[1] + hh


def _background(rng: np.random.Generator) -> np.ndarray:
    """A smooth two-colour gradient with texture, (H, W, 3) float."""
    a, b = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
    ramp = np.linspace(0, 1, WIDTH)[None, :, None] * np.ones((HEIGHT, 1, 1))
    texture = rng.normal(0, 3, (HEIGHT // 8 + 1, WIDTH // 8 + 1, 1)).repeat(8, 0).repeat(8, 1)
    return a + (b - a) * ramp + texture[:HEIGHT, :WIDTH]


def render_frames(spec: ClipSpec, cfg: SynthConfig) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of one clip."""
    return render_clip(spec, cfg)[0]


def render_clip(spec: ClipSpec, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """(T, H, W, 3) uint8 frames of one clip and (T, 4) float32 face boxes x1, y1, x2, y2 in px."""
    from PIL import Image, ImageDraw  # local, like av and pandas below: `dfew_mm --help` reads SynthConfig

    rng = np.random.default_rng(spec.seed)
    look = {
        "dx": rng.uniform(-40, 40), "dy": rng.uniform(-6, 6), "scale": rng.uniform(0.92, 1.08),
        "skin": tuple(int(v) for v in rng.uniform([170, 120, 90], [235, 195, 165])),
        "shirt": tuple(int(v) for v in rng.uniform(20, 235, 3)),
        "hair": tuple(int(v) for v in rng.uniform(10, 90, 3)),
        "trousers": tuple(int(v) for v in rng.uniform(20, 120, 3)),
        "feature": tuple(int(v) for v in rng.uniform(20, 60, 3)),
    }
    background = _background(rng)
    face, pose = FACE_CUES[spec.face_class], POSE_CUES[spec.pose_class]
    n = max(1, round(cfg.seconds * FPS))
    gain = rng.uniform(*cfg.dark_gain)
    frames = np.empty((n, HEIGHT, WIDTH, 3), np.uint8)
    boxes = np.empty((n, 4), np.float32)
    for i in range(n):
        image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
        boxes[i] = _draw_person(ImageDraw.Draw(image), look, face, pose, spec.strength, i / max(n - 1, 1))
        pixels = np.asarray(image, np.float32)
        if spec.dark:  # low light: exposure gain, a gamma lift, then sensor noise
            pixels = 255 * (gain * pixels / 255) ** 1.1 + rng.normal(0, cfg.dark_noise, pixels.shape)
        else:
            pixels += rng.normal(0, 2.0, pixels.shape)
        frames[i] = np.clip(pixels, 0, 255).astype(np.uint8)
    return frames, boxes


def render_audio(spec: ClipSpec, cfg: SynthConfig) -> np.ndarray:
    """(2, N) float32 stereo voice-like signal at AUDIO_RATE."""
    rng = np.random.default_rng(spec.seed + 1)
    cue = AUDIO_CUES[spec.audio_class]
    s = spec.strength
    mix = {k: REST_VOICE[k] + s * (cue[k] - REST_VOICE[k]) for k in cue}
    t = np.arange(round(cfg.seconds * AUDIO_RATE)) / AUDIO_RATE
    rate = mix["rate"] * rng.uniform(0.9, 1.1)
    phase_in_syllable = (t * rate) % 1.0
    f0 = mix["f0"] * rng.uniform(0.92, 1.08) * 2 ** (mix["glide"] * phase_in_syllable)
    f0 = f0 * (1 + mix["vibrato"] * np.sin(2 * np.pi * 7 * t))
    phase = 2 * np.pi * np.cumsum(f0) / AUDIO_RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = np.sin(np.pi * phase_in_syllable) ** 2 * (phase_in_syllable < 0.8)
    signal = mix["gain"] * 0.3 * voice * envelope + rng.normal(0, 0.01, t.shape)
    return np.stack([signal, signal]).astype(np.float32)


# -- writing ---------------------------------------------------------------------------------
def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H * 3/2, W) uint8 planar BT.601 limited-range YUV 4:2:0.

    Done here rather than by swscale, whose threaded conversion is not bit-exact between runs."""
    r, g, b = (rgb[..., c].astype(np.float64) for c in range(3))  # elementwise: no BLAS summation order
    y = 16 + 0.257 * r + 0.504 * g + 0.098 * b
    u = 128 - 0.148 * r - 0.291 * g + 0.439 * b
    v = 128 + 0.439 * r - 0.368 * g - 0.071 * b
    h, w = y.shape

    def half(plane: np.ndarray) -> np.ndarray:  # (H, W) -> (H/2, W/2) 2x2 means
        return plane.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    planes = np.concatenate([y.ravel(), half(u).ravel(), half(v).ravel()])
    return np.clip(np.round(planes), 0, 255).astype(np.uint8).reshape(h * 3 // 2, w)


def write_clip(path: Path, frames: np.ndarray, audio: np.ndarray) -> None:
    """H.264 (yuv420p) video and AAC stereo audio in an MP4 container, written atomically."""
    import av

    tmp = path.with_name(f".{path.name}.tmp.mp4")
    with av.open(str(tmp), "w") as container:
        video = container.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        # single-threaded x264 (lookahead too) is bit-exact for the same frames: seeded datasets repeat
        video.thread_count = 1
        video.options = {"preset": "veryfast", "crf": "23",
                         "x264-params": "threads=1:lookahead-threads=1:sliced-threads=0"}
        sound = container.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        chunk = 1024  # AAC frame size
        for start in range(0, audio.shape[1], chunk):
            piece = np.ascontiguousarray(audio[:, start:start + chunk])
            frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout="stereo")
            frame.sample_rate = AUDIO_RATE
            for packet in sound.encode(frame):
                container.mux(packet)
        for packet in sound.encode():
            container.mux(packet)
    tmp.replace(path)


def write_face_frames(root: Path, dataset, clip_folder: Path, frames: np.ndarray, boxes: np.ndarray) -> None:
    """The face frame folders of one clip, one per face source of `dataset`: FACE_FRAME_SIZE px crops around
    the face as JPEGs numbered 1.jpg .., every frame in a full-rate source (DFEW's Clip/clip_224x224/<id>/,
    FERV39k's 2_ClipsforFaceCrop/<scene>/<class>/<clip>/), SPARSE_FACE_FRAMES spread over the clip in the
    others (DFEW's Clip/clip_224x224_16f/<id>/); each folder written under a temporary name, then renamed."""
    import shutil

    from PIL import Image

    from dfew_mm.extract.decode import sample_indices
    from dfew_mm.extract.face import crop_faces

    scale = np.array([WIDTH, HEIGHT, WIDTH, HEIGHT], np.float32)
    faces = crop_faces(frames, boxes / scale, FACE_FRAME_SIZE, FACE_FRAME_MARGIN)  # (T, 224, 224, 3)
    for source in dataset.face_sources.values():
        chosen = np.arange(len(faces)) if source.full_rate else sample_indices(len(faces), SPARSE_FACE_FRAMES)
        folder = root / source.folder / clip_folder
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for number, i in enumerate(chosen, start=1):
            Image.fromarray(faces[i]).save(tmp / f"{number}.jpg", quality=95)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)


def _make_clip(args: tuple[ClipSpec, SynthConfig, Path]) -> None:
    spec, cfg, root = args
    dataset = get_dataset(cfg.dataset)()
    place = dataset.synth_clip(spec.clip_id, spec.label)
    frames, boxes = render_clip(spec, cfg)
    if cfg.writes_originals:
        (root / place.video).parent.mkdir(parents=True, exist_ok=True)
        write_clip(root / place.video, frames, render_audio(spec, cfg))
    if cfg.writes_frames:
        write_face_frames(root, dataset, place.frames, frames, boxes)


def split_groups(labels: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """(N,) group 0..GROUPS-1 of each clip, stratified by class: group k is fold k+1's test set."""
    rng = np.random.default_rng(seed + 7)
    group = np.empty(len(labels), int)
    position = 0  # runs on across classes so that small datasets fill every group
    for label in range(n_classes):
        members = [int(i) for i in np.flatnonzero(labels == label)]
        rng.shuffle(members)
        for i in members:
            group[i] = position % GROUPS
            position += 1
    return group


def write_split_files(folder: Path, dataset, tests: dict[int, np.ndarray], names: list[str],
                      labels: np.ndarray) -> None:
    """The split files of the folds in `tests` (fold -> (N,) bool, clip tested) under the split folder `folder`."""
    for k, is_test in tests.items():
        for part, mask in (("train", ~is_test), ("test", is_test)):
            path = folder / dataset.split_path(k, part)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dataset.format_split([(n, int(lab)) for n, lab, m in zip(names, labels, mask) if m]))


def write_splits(root: Path, specs: list[ClipSpec], seed: int, dataset_name: str = DEFAULT_DATASET) -> None:
    """The dataset's protocol over the clips: with k folds each clip is in the test set of exactly one
    fold (stratified, as DFEW's); a fixed split tests one stratified group (a fifth of the clips)."""
    dataset = get_dataset(dataset_name)()
    labels = np.array([s.label for s in specs])
    group = split_groups(labels, len(dataset.classes), seed)
    if len(dataset.folds) > GROUPS:
        raise ConfigError(f"{dataset.title} has {len(dataset.folds)} folds; synthetic data splits into {GROUPS}")
    tests = {k: group == i for i, k in enumerate(dataset.folds)}
    names = [dataset.synth_clip(s.clip_id, s.label).name for s in specs]
    write_split_files(root / dataset.split_folder, dataset, tests, names, labels)


def write_holdout_split(folder: str | Path, truth, test_share: float, seed: int,
                        dataset_name: str = DEFAULT_DATASET) -> Path:
    """Split files of one fold (the dataset's first) in its file layout under `folder`: a stratified share
    `test_share` of the clips of `truth` (synth_truth.csv) for test, the rest for training. For checks
    that need a larger test fold than a 5-fold protocol gives (20%); returns `folder` (a --splits-dir)."""
    dataset = get_dataset(dataset_name)()
    if not 0.0 < test_share < 1.0:
        raise ConfigError(f"test share {test_share} must lie between 0 and 1")
    rng = np.random.default_rng(seed + 11)
    labels = truth["label"].to_numpy()
    test = np.zeros(len(truth), bool)
    for label in range(len(dataset.classes)):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        test[members[: int(round(test_share * len(members)))]] = True
    names = [dataset.synth_clip(int(i), int(lab)).name for i, lab in zip(truth["clip_id"], labels)]
    folder = Path(folder)
    write_split_files(folder, dataset, {dataset.folds[0]: test}, names, labels)
    return folder


def generate_dataset(root: str | Path, cfg: SynthConfig = SynthConfig(), workers: int = 1) -> dict:
    """Write clips (and/or their face frames), split files and `synth_truth.csv` (what each modality shows)
    under root, in the layout of `cfg.dataset`."""
    import pandas as pd

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    specs = plan_clips(cfg)
    jobs = [(s, cfg, root) for s in specs]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_make_clip, jobs))
    else:
        for job in jobs:
            _make_clip(job)
    write_splits(root, specs, cfg.seed, cfg.dataset)
    truth = pd.DataFrame([asdict(s) for s in specs])
    truth.to_csv(root / "synth_truth.csv", index=False)
    return {"clips": len(specs), "dark": int(truth["dark"].sum())}
