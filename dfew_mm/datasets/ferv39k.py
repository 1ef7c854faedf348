"""FERV39k: 7 classes, a fixed train/test split, face-cropped frames only (no original clips, no audio).

Layout (as distributed; some copies nest the frame folder in itself, which is accepted):
    ROOT/2_ClipsforFaceCrop/<scene>/<class>/<clip>/<frame>.jpg   face crops of 38,935 clips from 22 scenes
    ROOT/4_setups/All_scenes/train_All.csv                       the fixed training split (31,088 clips)
    ROOT/4_setups/All_scenes/test_All.csv                        the fixed test split (7,847 clips)
Each split line is `<scene>/<class>/<clip> <Class>`, space-separated and without a header, e.g.
`Action/Sad/0010 Sad`. A clip's store id is its path with '__' for '/' (`Action__Sad__0010`), since
store ids name files. Frames are read in the order of the number in their names. Faces come from the
`2_ClipsforFaceCrop` face source: no detection runs, and there is no pose or audio to extract.
Protocol: train on train_All, test on test_All (one fold, `--fold 1`); UAR and WAR on the test split.

Sources: Wang et al., "FERV39k: A Large-Scale Multi-Scene Dataset for Facial Expression Recognition in
Videos", CVPR 2022 (https://wangyanckxx.github.io/Proj_CVPR2022_FERV39k.html, github wangyanckxx/FERV39k):
38,935 clips, 22 scenes, 7 classes, train/test 31,088/7,847. Files, line format and class order
(Happy, Sad, Neutral, Angry, Surprise, Disgust, Fear) as read by sunlicai/MAE-DFER preprocess/ferv39k.py
(`4_setups/All_scenes/{train,test}_All.csv`, frames in `2_ClipsforFaceCrop`); the per-clip folder
depth `<scene>/<class>/<clip>` as in the lists MAE-DFER ships (saved/data/ferv39k/all_scenes: 31,088 and
7,847 clips, e.g. `Crime/Angry/0063`) and in public FERV39k loaders (lines such as `Action/Sad/0010 Sad`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from dfew_mm.datasets.base import Dataset, SynthClip, read_name_class_split
from dfew_mm.datasets.frame_folders import FrameFolders
from dfew_mm.errors import DatasetError

if TYPE_CHECKING:
    import pandas as pd

FACE_FOLDER = "2_ClipsforFaceCrop"
ID_SEPARATOR = "__"  # replaces '/' of the clip path in store ids
DEPTH = 3  # <scene>/<class>/<clip>


class Ferv39k(Dataset):
    name = "ferv39k"
    title = "FERV39k"
    classes = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
    folds = (1,)
    # every frame of a clip's face track; the folders carry no time stamps, so frames are timed at a nominal rate
    face_sources = {FACE_FOLDER: FrameFolders(FACE_FOLDER, Path(FACE_FOLDER), full_rate=True, fps=25.0,
                                              dataset="FERV39k")}
    split_folder = "4_setups/All_scenes"
    layout = ("expected FERV39k layout:\n"
              f"  ROOT/{FACE_FOLDER}/<scene>/<class>/<clip>/<frame>.jpg\n"
              "  ROOT/4_setups/All_scenes/train_All.csv, test_All.csv\n"
              "(lines '<scene>/<class>/<clip> <Class>', e.g. 'Action/Sad/0010 Sad'). Use --splits-dir if the "
              "split files live elsewhere.")

    def split_path(self, k: int, part: str) -> Path:
        return Path(f"{part}_All.csv")

    def read_split(self, path: Path) -> pd.DataFrame:
        return read_name_class_split(path, self.title, self.classes, self.clip_id, "<scene>/<class>/<clip> <Class>")

    def clip_id(self, raw: object, where: str) -> str:
        parts = [p for p in str(raw).strip().replace("\\", "/").split("/") if p]
        if len(parts) != DEPTH or any(ID_SEPARATOR in p or p in (".", "..") for p in parts):
            raise DatasetError(f"{where}: clip '{raw}' is not a FERV39k clip path <scene>/<class>/<clip>")
        return ID_SEPARATOR.join(parts)

    def frame_folders(self, source: str) -> dict[str, Path]:
        """Clip id -> frame folder, three levels down (<scene>/<class>/<clip>); {} without the folder."""
        folder_of = self.frames_of(source).folder
        if self.root is None:
            raise DatasetError("give the FERV39k root (--root) to find its face frames")
        folder = self.root / folder_of
        if (folder / FACE_FOLDER).is_dir():  # copies unpacked into a folder of the archive's name
            folder = folder / FACE_FOLDER
        return {ID_SEPARATOR.join(path.relative_to(folder).parts): path
                for path in sorted(folder.glob("/".join(["*"] * DEPTH))) if path.is_dir()}

    def format_split(self, rows: Sequence[tuple[str, int]]) -> str:
        return "".join(f"{name} {self.classes[label].capitalize()}\n" for name, label in rows)

    def synth_clip(self, number: int, label: int) -> SynthClip:
        name = f"Synthetic/{self.classes[label].capitalize()}/{number:04d}"
        return SynthClip(name, None, Path(name))
