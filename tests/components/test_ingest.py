"""Ingest logic on the real GTSRB files: layouts, track split, data card, bad data."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from components.ingest.ingest import IngestConfig, ingest
from tsr.core.config import StoreConfig
from tsr.core.dataset import CARD_FILE, TRAIN_FILE, VAL_FILE, DataError, load_split, split_by_group
from tsr.core.drift import InputReference, build_reference
from tsr.core.sources import limit_groups, list_source, read_source
from tsr.core.store import S3Store


def test_gtsrb_ingest_splits_by_track_and_writes_a_data_card(gtsrb_small: Path, tmp_path: Path) -> None:
    card = ingest(IngestConfig(source=str(gtsrb_small)), tmp_path)
    train, val = load_split(tmp_path / TRAIN_FILE), load_split(tmp_path / VAL_FILE)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (3, 32, 32)
    assert not set(train.groups.tolist()) & set(val.groups.tolist()), "a track is on both sides"
    assert len(train) + len(val) == card["totals"]["images"]
    # 4 tracks per class, 20% -> one validation track per class
    assert card["totals"]["val_groups"] == 43 and card["totals"]["train_groups"] == 3 * 43
    assert card["counts"]["train"] == torch.bincount(train.labels, minlength=43).tolist()
    assert len(card["fingerprint"]["value"]) == 64
    assert all(0 < m < 1 for m in card["channel_mean"]) and all(0 < s < 1 for s in card["channel_std"])
    # The drift baseline: decile bins of per-image brightness of the training split.
    reference = InputReference.from_dict(card["input_reference"])
    assert reference.images == len(train) and sum(reference.fractions) == pytest.approx(1.0, abs=1e-4)
    assert reference.to_dict() == build_reference(train.images).to_dict()
    assert card["original_size"]["width"]["max"] == 32
    assert json.loads((tmp_path / CARD_FILE).read_text())["split_strategy"] == "by-track"


def test_ingest_is_deterministic_and_the_seed_matters(gtsrb_small: Path, tmp_path: Path) -> None:
    a = ingest(IngestConfig(source=str(gtsrb_small), seed=1), tmp_path / "a")
    b = ingest(IngestConfig(source=str(gtsrb_small), seed=1), tmp_path / "b")
    c = ingest(IngestConfig(source=str(gtsrb_small), seed=2), tmp_path / "c")
    assert a["fingerprint"] == b["fingerprint"] == c["fingerprint"]
    assert torch.equal(load_split(tmp_path / "a" / VAL_FILE).groups, load_split(tmp_path / "b" / VAL_FILE).groups)
    assert not torch.equal(load_split(tmp_path / "a" / VAL_FILE).groups, load_split(tmp_path / "c" / VAL_FILE).groups)


def test_split_by_group_keeps_whole_groups() -> None:
    labels = torch.tensor([0] * 30 + [1] * 30)
    groups = torch.arange(60) // 10  # three groups per class
    train_idx, val_idx = split_by_group(labels, groups, 0.34, seed=0)
    train_groups, val_groups = set(groups[train_idx].tolist()), set(groups[val_idx].tolist())
    assert not train_groups & val_groups
    assert len(val_groups) == 2 and len(train_idx) + len(val_idx) == 60


def test_limit_groups_keeps_the_first_tracks(gtsrb_small: Path) -> None:
    listing = limit_groups(list_source(gtsrb_small), 1)
    per_class = {}
    for s in listing.samples:
        per_class.setdefault(s.label, set()).add(s.group)
    assert len(per_class) == 43 and all(len(g) == 1 for g in per_class.values())


def test_test_split_reads_the_csv_labels(gtsrb_small: Path) -> None:
    split, names = read_source(str(gtsrb_small), "test", 32)
    assert len(names) == 43 and len(split) > 0
    assert set(split.labels.tolist()) == set(range(43))


def test_imagefolder_layout(gtsrb_small: Path, tmp_path: Path) -> None:
    root = tmp_path / "folder"
    training = gtsrb_small / "gtsrb" / "GTSRB" / "Training"
    for cls, name in (("00014", "stop"), ("00017", "no-entry"), ("00001", "speed-30")):
        shutil.copytree(training / cls, root / name, ignore=shutil.ignore_patterns("*.csv"))
    card = ingest(IngestConfig(source=str(root)), tmp_path / "out")
    assert card["layout"] == "imagefolder" and card["class_names"] == ["no-entry", "speed-30", "stop"]
    assert card["split_strategy"] == "stratified-random"
    assert all(v > 0 for v in card["counts"]["val"])


def test_s3_source(gtsrb_small: Path, minio: StoreConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = S3Store(minio, "datasets")
    store.ensure_bucket()
    training = gtsrb_small / "gtsrb" / "GTSRB" / "Training"
    for cls in ("00000", "00001"):
        for path in sorted((training / cls).glob("*.ppm")):
            store.put_file(f"mini/{cls}/{path.name}", path)
    with caplog.at_level(logging.WARNING, logger="urllib3"):
        card = ingest(IngestConfig(source="s3://datasets/mini"), tmp_path / "out", minio)
    assert card["layout"] == "imagefolder" and card["num_classes"] == 2
    # the parallel copy reuses its connections (seen in a pod: one warning per object, a new connection each)
    assert not [r for r in caplog.records if "Connection pool is full" in r.getMessage()]
    with pytest.raises(DataError, match="no objects under this prefix"):
        ingest(IngestConfig(source="s3://datasets/nothing-here"), tmp_path / "none", minio)


# ---- bad data: every error names the file or folder ----------------------------------------------
def _copy_small(gtsrb_small: Path, tmp_path: Path) -> Path:
    root = tmp_path / "bad"
    shutil.copytree(gtsrb_small, root)
    return root


def test_corrupt_image_names_the_file(gtsrb_small: Path, tmp_path: Path) -> None:
    root = _copy_small(gtsrb_small, tmp_path)
    victim = next((root / "gtsrb" / "GTSRB" / "Training" / "00005").glob("*.ppm"))
    victim.write_bytes(b"P6\n32 32\n255\n" + b"\x00" * 10)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=victim.name):
        ingest(IngestConfig(source=str(root)), out)
    assert not (out / TRAIN_FILE).exists(), "nothing half-written"


def test_empty_class_names_the_folder(gtsrb_small: Path, tmp_path: Path) -> None:
    root = _copy_small(gtsrb_small, tmp_path)
    folder = root / "gtsrb" / "GTSRB" / "Training" / "00007"
    for p in folder.glob("*.ppm"):
        p.unlink()
    with pytest.raises(DataError, match="00007: empty class folder"):
        ingest(IngestConfig(source=str(root)), tmp_path / "out")


def test_missing_test_csv_names_the_file(gtsrb_small: Path, tmp_path: Path) -> None:
    root = _copy_small(gtsrb_small, tmp_path)
    (root / "gtsrb" / "GT-final_test.csv").unlink()
    with pytest.raises(DataError, match=r"GT-final_test\.csv: missing label file"):
        read_source(str(root), "test", 32)


def test_wrong_layout_and_missing_dir(tmp_path: Path) -> None:
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "x.txt").write_text("x")
    with pytest.raises(DataError, match="neither GTSRB layout"):
        ingest(IngestConfig(source=str(tmp_path / "flat")), tmp_path / "out")
    with pytest.raises(DataError, match="does not exist"):
        ingest(IngestConfig(source=str(tmp_path / "missing")), tmp_path / "out")
    with pytest.raises(DataError, match="unknown URI scheme"):
        ingest(IngestConfig(source="gs://bucket/x"), tmp_path / "out")


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        IngestConfig(source="x", val_fraction=1.5)
    with pytest.raises(ValueError, match="layout"):
        IngestConfig(source="x", layout="coco")
