"""MAFW, its single-expression set: 11 classes, 5-fold cross-validation, clips with audio.

Layout (as distributed; `split/` is the name some copies give the split folder):
    ROOT/data/clips/<id>.mp4                                    10,045 clips from films, TV and short videos
    ROOT/Train & Test Set/single/no_caption/set_k/train.txt     k = 1..5
    ROOT/Train & Test Set/single/no_caption/set_k/test.txt
Each split line is `<id>.mp4 <class name>`, space-separated, e.g. `00025.mp4 anger`. Ids are
normalised like DFEW's: `00025.mp4` is clip '25'. Protocol: fold k trains on set_k/train.txt and tests
on set_k/test.txt; UAR and WAR per fold, mean over the 5 folds.

Sources: Liu et al., "MAFW: A Large-scale, Multi-modal, Compound Affective Database for Dynamic Facial
Expression Recognition in the Wild", ACM MM 2022 (https://mafw-database.github.io/MAFW): 10,045
clips, the 11 single-expression classes in this order; the single-expression set holds 9,172 clips
(fold 1: 7,333 train, 1,839 test in the lists MAE-DFER ships, saved/data/mafw/single/split01). Split
files and class order as read by sunlicai/HiCMAE preprocess/mafw_av.py (`Train & Test
Set/single/no_caption/set_{k}/{train,test}.txt`, clips in `data/clips`, audio from the clips) and
sunlicai/MAE-DFER preprocess/mafw.py (the same files under `split/single/no_caption`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from dfew_mm.datasets.base import Dataset, SynthClip, read_name_class_split

if TYPE_CHECKING:
    import pandas as pd

SPLIT_FOLDER = Path("Train & Test Set") / "single" / "no_caption"
ALT_SPLIT_FOLDER = Path("split") / "single" / "no_caption"


class Mafw(Dataset):
    name = "mafw"
    title = "MAFW"
    classes = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise", "contempt", "anxiety",
               "helplessness", "disappointment")
    folds = (1, 2, 3, 4, 5)
    clip_dir = "data/clips"
    split_folder = str(SPLIT_FOLDER)
    layout = ("expected MAFW layout:\n"
              "  ROOT/data/clips/<id>.mp4\n"
              f"  ROOT/{SPLIT_FOLDER}/set_1/train.txt, test.txt .. set_5/...  (or ROOT/{ALT_SPLIT_FOLDER}/...)\n"
              "(lines '<id>.mp4 <class>', e.g. '00025.mp4 anger'). Use --splits-dir if the split files live elsewhere.")

    def splits_base(self) -> Path:
        if self.splits_dir is None and self.root is not None and not (self.root / SPLIT_FOLDER).is_dir() \
                and (self.root / ALT_SPLIT_FOLDER).is_dir():
            return self.root / ALT_SPLIT_FOLDER
        return super().splits_base()

    def split_path(self, k: int, part: str) -> Path:
        return Path(f"set_{k}") / f"{part}.txt"

    def read_split(self, path: Path) -> pd.DataFrame:
        return read_name_class_split(path, self.title, self.classes, self.clip_id, "<id>.mp4 <class>")

    def format_split(self, rows: Sequence[tuple[str, int]]) -> str:
        return "".join(f"{name} {self.classes[label]}\n" for name, label in rows)

    def synth_clip(self, number: int, label: int) -> SynthClip:
        return SynthClip(f"{number:05d}.mp4", Path(self.clip_dir) / f"{number:05d}.mp4", None)
