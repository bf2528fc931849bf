"""GTSRB specifics: the 43 class names, the file-name convention (TTTTT_FFFFF.ppm = track, frame) and
the readers of its training and test layouts (the folders torchvision's `GTSRB` dataset writes)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from tsr.core.dataset import DataError, Listing, Sample

CLASS_NAMES: list[str] = [
    "Speed limit (20km/h)",
    "Speed limit (30km/h)",
    "Speed limit (50km/h)",
    "Speed limit (60km/h)",
    "Speed limit (70km/h)",
    "Speed limit (80km/h)",
    "End of speed limit (80km/h)",
    "Speed limit (100km/h)",
    "Speed limit (120km/h)",
    "No passing",
    "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection",
    "Priority road",
    "Yield",
    "Stop",
    "No vehicles",
    "Vehicles over 3.5 metric tons prohibited",
    "No entry",
    "General caution",
    "Dangerous curve to the left",
    "Dangerous curve to the right",
    "Double curve",
    "Bumpy road",
    "Slippery road",
    "Road narrows on the right",
    "Road work",
    "Traffic signals",
    "Pedestrians",
    "Children crossing",
    "Bicycles crossing",
    "Beware of ice/snow",
    "Wild animals crossing",
    "End of all speed and passing limits",
    "Turn right ahead",
    "Turn left ahead",
    "Ahead only",
    "Go straight or right",
    "Go straight or left",
    "Keep right",
    "Keep left",
    "Roundabout mandatory",
    "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
]
NUM_CLASSES = len(CLASS_NAMES)

TRAIN_FILE_RE = re.compile(r"^(\d{5})_(\d{5})\.ppm$")


def gtsrb_base(root: Path) -> Path | None:
    """The `GTSRB` folder for a torchvision root, a `gtsrb` folder, or the `GTSRB` folder itself."""
    for candidate in (root / "gtsrb" / "GTSRB", root / "GTSRB", root):
        if (candidate / "Training").is_dir() or (candidate / "Final_Test").is_dir():
            return candidate
    return None


def list_gtsrb_train(base: Path) -> Listing:
    training = base / "Training"
    if not training.is_dir():
        raise DataError(f"{base}: no Training folder (expected {training})")
    class_dirs = sorted(p for p in training.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{training}: no class folders 00000..00042")
    for class_dir in class_dirs:
        if not class_dir.name.isdigit():
            raise DataError(f"{class_dir}: class folder name must be a 5-digit class id")
        if int(class_dir.name) >= len(CLASS_NAMES):
            raise DataError(f"{class_dir}: class id {int(class_dir.name)} is outside 0..{len(CLASS_NAMES) - 1}")
    # The label space is GTSRB's 43 classes: a model trained without one would still predict it,
    # never having seen it. Fewer classes are an ImageFolder dataset (one folder per class).
    present = {int(d.name) for d in class_dirs}
    missing = [c for c in range(len(CLASS_NAMES)) if c not in present]
    if missing:
        named = ", ".join(f"{c:05d} ({CLASS_NAMES[c]})" for c in missing[:5]) + (" …" if len(missing) > 5 else "")
        raise DataError(
            f"{training}: missing class folder(s) {named}; the GTSRB layout needs all {len(CLASS_NAMES)} "
            "classes (use the ImageFolder layout for a subset)"
        )
    samples: list[Sample] = []
    for class_dir in class_dirs:
        label = int(class_dir.name)
        found = 0
        for path in sorted(class_dir.iterdir()):
            match = TRAIN_FILE_RE.match(path.name)
            if match is None:
                continue
            samples.append(Sample(path, label, label * 100_000 + int(match.group(1))))
            found += 1
        if found == 0:
            raise DataError(f"{class_dir}: empty class folder (no TTTTT_FFFFF.ppm images)")
    return Listing(root=base, layout="gtsrb", class_names=list(CLASS_NAMES), samples=samples)


def _test_csv(base: Path) -> Path:
    for candidate in (
        base.parent / "GT-final_test.csv",
        base / "GT-final_test.csv",
        base / "Final_Test" / "GT-final_test.csv",
    ):
        if candidate.is_file():
            return candidate
    raise DataError(f"{base.parent / 'GT-final_test.csv'}: missing label file for the GTSRB test split")


def list_gtsrb_test(base: Path) -> Listing:
    images = base / "Final_Test" / "Images"
    if not images.is_dir():
        raise DataError(f"{base}: no Final_Test/Images folder for the test split (expected {images})")
    csv_path = _test_csv(base)
    samples: list[Sample] = []
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh, delimiter=";")
        if reader.fieldnames is None or not {"Filename", "ClassId"} <= set(reader.fieldnames):
            raise DataError(f"{csv_path}: needs ';'-separated columns Filename and ClassId")
        for lineno, row in enumerate(reader, start=2):
            path = images / row["Filename"]
            try:
                label = int(row["ClassId"])
            except (TypeError, ValueError) as exc:
                raise DataError(f"{csv_path} line {lineno}: ClassId {row['ClassId']!r} is not an integer") from exc
            if not 0 <= label < len(CLASS_NAMES):
                raise DataError(f"{csv_path} line {lineno}: ClassId {label} outside 0..{len(CLASS_NAMES) - 1}")
            if not path.is_file():
                raise DataError(f"{csv_path} line {lineno}: image {path} does not exist")
            samples.append(Sample(path, label, len(samples)))
    if not samples:
        raise DataError(f"{csv_path}: no rows")
    return Listing(root=base, layout="gtsrb", class_names=list(CLASS_NAMES), samples=samples)
