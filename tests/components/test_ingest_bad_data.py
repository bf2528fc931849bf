"""Ingest on damaged copies of real GTSRB data, and the components' parameter checks.

Policy under test (components/ingest/README.md):
- a corrupt, truncated, empty or unreadable image stops ingest with a `DataError` naming the file,
  unless `skip_corrupt=True`: then it is left out, counted and named in the data card (a class that
  loses every image still stops it);
- the GTSRB layout needs all 43 class folders (a missing one is named with its class); an empty
  class folder is named; fewer classes are an ImageFolder dataset;
- all or nothing: a failed ingest leaves the output directory exactly as it was (absent, empty or
  the previous dataset) and no temp directory behind; a bad parameter fails before anything is read.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from components.ingest.ingest import IngestConfig, ingest
from components.train.train import TrainConfig
from pipelines.local_run import check_local_params, run_local
from tsr.core.config import StoreConfig
from tsr.core.dataset import CARD_FILE, TRAIN_FILE, VAL_FILE, DataError
from tsr.core.validation import InvalidParameter

TRACKS = 2  # tracks per class kept in the damaged copies: enough for a train/val split, quick to read


@pytest.fixture(scope="module")
def pristine(gtsrb_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GTSRB-layout training set with the first TRACKS tracks of every class (about 2,600 images)."""
    root = tmp_path_factory.mktemp("pristine")
    source = gtsrb_small / "gtsrb" / "GTSRB" / "Training"
    for class_dir in sorted(source.iterdir()):
        tracks = sorted({p.name[:5] for p in class_dir.glob("*.ppm")})[:TRACKS]
        target = root / "gtsrb" / "GTSRB" / "Training" / class_dir.name
        target.mkdir(parents=True)
        for path in sorted(class_dir.glob("*.ppm")):
            if path.name[:5] in tracks:
                shutil.copy(path, target / path.name)
    return root


@pytest.fixture
def dataset(pristine: Path, tmp_path: Path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def training(root: Path) -> Path:
    return root / "gtsrb" / "GTSRB" / "Training"


def first_image(root: Path, cls: str = "00014", index: int = 3) -> Path:
    return sorted((training(root) / cls).glob("*.ppm"))[index]


def no_leftovers(out: Path) -> None:
    """The output directory absent and no hidden partial/old directories beside it."""
    assert not out.exists(), sorted(out.rglob("*"))
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# ---- damaged images ------------------------------------------------------------------------------
def _garbage(path: Path) -> str:
    path.write_bytes(b"GIF89a? no: just some bytes with a .ppm name" * 3)
    return "cannot decode image"


def _truncated(path: Path) -> str:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # valid PPM header, half of the pixels
    return "truncated"


def _zero_bytes(path: Path) -> str:
    path.write_bytes(b"")
    return "empty file (0 bytes)"


def _directory(path: Path) -> str:
    path.unlink()
    path.mkdir()  # a name that matches TTTTT_FFFFF.ppm but cannot be read as a file (works as root too)
    return "cannot read"


def _unreadable(path: Path) -> str:
    if os.geteuid() == 0:
        pytest.skip("root reads a chmod 000 file; the 'directory' case covers the unreadable path")
    path.chmod(0)
    return "cannot read (Permission denied)"


DAMAGE: dict[str, Callable[[Path], str]] = {
    "garbage-bytes": _garbage,
    "truncated": _truncated,
    "zero-bytes": _zero_bytes,
    "directory-named-like-an-image": _directory,
    "chmod-000": _unreadable,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_image_stops_ingest_naming_the_file(dataset: Path, tmp_path: Path, damage: str) -> None:
    victim = first_image(dataset)
    expected = DAMAGE[damage](victim)
    out = tmp_path / "out"
    with pytest.raises(DataError) as raised:
        ingest(IngestConfig(source=str(dataset), threads=2), out)
    message = str(raised.value)
    assert str(victim) in message and expected in message, message
    assert "\n" not in message and "BytesIO" not in message
    no_leftovers(out)


def test_skip_corrupt_leaves_the_files_out_and_records_them(dataset: Path, tmp_path: Path) -> None:
    victims = [first_image(dataset, "00003", 0), first_image(dataset, "00040", 5)]
    _garbage(victims[0])
    _zero_bytes(victims[1])
    card = ingest(IngestConfig(source=str(dataset), skip_corrupt=True, threads=2), tmp_path / "out")
    skipped = card["skipped_images"]
    assert skipped["count"] == 2 and card["skip_corrupt"] is True
    assert {f["file"] for f in skipped["files"]} == {
        f"Training/00003/{victims[0].name}",
        f"Training/00040/{victims[1].name}",
    }
    assert any("empty file" in f["reason"] for f in skipped["files"])
    total = sum(1 for _ in training(dataset).rglob("*.ppm"))
    assert card["totals"]["images"] == card["fingerprint"]["files"] == total - 2
    assert card["totals"]["train"] + card["totals"]["val"] == total - 2
    assert json.loads((tmp_path / "out" / CARD_FILE).read_text())["skipped_images"] == skipped


def test_skip_corrupt_still_stops_when_a_class_loses_every_image(dataset: Path, tmp_path: Path) -> None:
    for path in (training(dataset) / "00019").glob("*.ppm"):
        path.write_bytes(b"")
    with pytest.raises(DataError, match=r"every image of class\(es\) 'Dangerous curve to the left'"):
        ingest(IngestConfig(source=str(dataset), skip_corrupt=True, threads=2), tmp_path / "out")
    no_leftovers(tmp_path / "out")


def test_a_clean_copy_ingests_and_records_no_skips(dataset: Path, tmp_path: Path) -> None:
    card = ingest(IngestConfig(source=str(dataset), threads=2), tmp_path / "out")
    assert card["skipped_images"] == {"count": 0, "files": []}
    assert card["num_classes"] == 43 and card["totals"]["val_groups"] == 43


# ---- missing or empty classes --------------------------------------------------------------------
def test_a_missing_class_folder_is_named_with_its_class(dataset: Path, tmp_path: Path) -> None:
    shutil.rmtree(training(dataset) / "00007")
    with pytest.raises(DataError, match=r"missing class folder\(s\) 00007 \(Speed limit \(100km/h\)\)") as raised:
        ingest(IngestConfig(source=str(dataset)), tmp_path / "out")
    assert "ImageFolder" in str(raised.value)
    no_leftovers(tmp_path / "out")


def test_many_missing_classes_are_listed_briefly(dataset: Path, tmp_path: Path) -> None:
    for cls in range(10, 43):
        shutil.rmtree(training(dataset) / f"{cls:05d}")
    with pytest.raises(DataError, match=r"00010 .*00014 \(Stop\) …") as raised:
        ingest(IngestConfig(source=str(dataset)), tmp_path / "out")
    assert "00015" not in str(raised.value)


def test_an_empty_class_folder_is_named(dataset: Path, tmp_path: Path) -> None:
    for path in (training(dataset) / "00021").iterdir():
        path.unlink()
    with pytest.raises(DataError, match="00021: empty class folder"):
        ingest(IngestConfig(source=str(dataset)), tmp_path / "out")
    no_leftovers(tmp_path / "out")


def test_imagefolder_with_an_empty_class_or_a_corrupt_image(pristine: Path, tmp_path: Path) -> None:
    root = tmp_path / "folder"
    for cls, name in (("00014", "stop"), ("00017", "no-entry")):
        shutil.copytree(training(pristine) / cls, root / name)
    (root / "yield").mkdir()
    with pytest.raises(DataError, match=r"yield: empty class folder"):
        ingest(IngestConfig(source=str(root)), tmp_path / "out")
    (root / "yield").rmdir()
    victim = sorted((root / "stop").glob("*.ppm"))[0]
    _truncated(victim)
    with pytest.raises(DataError, match=str(victim)):
        ingest(IngestConfig(source=str(root), layout="imagefolder"), tmp_path / "out")
    no_leftovers(tmp_path / "out")


# ---- the source and the output directory ------------------------------------------------------------
def test_missing_or_wrong_sources(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(DataError, match="missing: does not exist"):
        ingest(IngestConfig(source=str(tmp_path / "missing")), tmp_path / "out")
    with pytest.raises(DataError, match="a-file: is a file, not a data directory"):
        ingest(IngestConfig(source=str(tmp_path / "a-file")), tmp_path / "out")
    for source, message in (
        ("s3://", "has no bucket name"),
        ("s3:///prefix", "has no bucket name"),
        ("ftp://host/x", "unknown URI scheme 'ftp'"),
        ("s3://datasets/a/../../b", "'..'"),
    ):
        with pytest.raises(DataError, match=message):
            ingest(IngestConfig(source=source), tmp_path / "out", StoreConfig(kind="dir", directory=tmp_path / "s"))
    no_leftovers(tmp_path / "out")
    assert not (tmp_path / "s").exists()


def test_a_failed_ingest_keeps_the_previous_dataset(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ingest(IngestConfig(source=str(dataset), seed=1, threads=2), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _garbage(first_image(dataset, "00030", 2))
    with pytest.raises(DataError, match="00030"):
        ingest(IngestConfig(source=str(dataset), seed=2, threads=2), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "the previous dataset is untouched"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    # A successful run replaces it as a whole.
    card = ingest(IngestConfig(source=str(dataset), seed=2, skip_corrupt=True, threads=2), out)
    assert sorted(p.name for p in out.iterdir()) == sorted([TRAIN_FILE, VAL_FILE, CARD_FILE])
    assert json.loads((out / CARD_FILE).read_text())["seed"] == 2 == card["seed"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_an_empty_output_directory_is_filled(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "artifact"
    out.mkdir()  # what an orchestrator may hand over
    ingest(IngestConfig(source=str(dataset), threads=2), out)
    assert sorted(p.name for p in out.iterdir()) == sorted([TRAIN_FILE, VAL_FILE, CARD_FILE])


def test_unusable_output_directories_are_refused_before_reading(tmp_path: Path) -> None:
    """The source does not even exist: the output check comes first and names the output."""
    (tmp_path / "a-file").write_text("x")
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep\n")
    config = IngestConfig(source=str(tmp_path / "missing"))
    for out, message in (
        (tmp_path / "a-file", "is a file"),
        (tmp_path / "a-file" / "sub", "a-file is a file"),
        (foreign, r"is not empty \(mine.txt\)"),
    ):
        with pytest.raises(InvalidParameter, match=message) as raised:
            ingest(config, out)
        assert raised.value.param == "out_dir"
    assert (foreign / "mine.txt").read_text() == "keep\n"


# ---- parameters: refused before anything is read --------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("val_fraction", 0.0, r"in \(0, 1\), got 0"),
        ("val_fraction", 1.0, r"in \(0, 1\), got 1"),
        ("val_fraction", -0.1, r"in \(0, 1\)"),
        ("val_fraction", 1.5, r"in \(0, 1\)"),
        ("layout", "coco", "must be one of auto, gtsrb, imagefolder"),
        ("split", "validation", "must be one of train, test"),
        ("seed", -1, ">= 0"),
        ("image_size", 4, r"in \[8, 1024\]"),
        ("max_groups_per_class", -1, ">= 0"),
        ("threads", 0, ">= 1"),
    ],
)
def test_bad_ingest_parameters(field: str, value: object, message: str) -> None:
    with pytest.raises(InvalidParameter, match=message) as raised:
        IngestConfig(source="anything", **{field: value})  # type: ignore[arg-type]
    assert raised.value.param == field and str(raised.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", 0, ">= 1, got 0"),
        ("epochs", -5, ">= 1"),
        ("batch_size", 0, ">= 2"),
        ("batch_size", 1, ">= 2"),  # BatchNorm needs two samples: batch 1 would train nothing
        ("arch", "resnet9000", "unknown architecture 'resnet9000'"),
        ("arch", "", "unknown architecture"),
        ("threads", -1, ">= 0"),
        ("lr", 0.0, r"in \(0, 10\)"),
        ("lr", 10.0, r"in \(0, 10\)"),
        ("width", 0, ">= 1"),
        ("weight_decay", -1e-4, ">= 0"),
        ("label_smoothing", 1.0, r"in \[0, 1\)"),
        ("seed", -1, ">= 0"),
        ("contrast", "retinex", "must be one of clahe, equalize, none"),
        ("precision", "fp16", "must be one of auto, bf16, fp32"),
        ("rotate_deg", -1.0, ">= 0"),
        ("erase", 1.5, r"in \[0, 1\]"),
    ],
)
def test_bad_training_parameters(field: str, value: object, message: str) -> None:
    with pytest.raises(InvalidParameter, match=message) as raised:
        TrainConfig(**{field: value})  # type: ignore[arg-type]
    assert raised.value.param == field


def test_torchvision_architectures_are_accepted() -> None:
    assert TrainConfig(arch="resnet18").arch == "resnet18"
    assert TrainConfig(arch="mobilenet_v3_small").arch == "mobilenet_v3_small"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"arch": "nope"}, "arch"),
        ({"threads": -2}, "threads"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"layout": "coco"}, "layout"),
        ({"model_name": "../x"}, "model_name"),
        ({"deploy_mode": "k8s"}, "deploy_mode"),
        ({"data_source": "{tmp}/missing"}, "data_source"),
        ({"data_source": "ftp://h/x"}, "data_source"),
        ({"data_source": "s3://"}, "data_source"),
        ({"test_data": "{tmp}/missing"}, "test_data"),
    ],
)
def test_local_pipeline_fails_fast_on_bad_parameters(tmp_path: Path, params: dict[str, object], param: str) -> None:
    """run_local checks every step's parameters before the runner starts or the pipeline root is made."""
    base: dict[str, object] = {"data_source": str(tmp_path), "epochs": 1}
    bad = {**base, **{k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in params.items()}}
    with pytest.raises(InvalidParameter) as raised:
        check_local_params(bad)
    assert raised.value.param == param
    root = tmp_path / "root"
    with pytest.raises(InvalidParameter):
        run_local(bad, StoreConfig(kind="dir", directory=tmp_path / "store"), root)
    assert not root.exists() and not (tmp_path / "store").exists()


def test_local_pipeline_accepts_a_never_passing_gate(tmp_path: Path) -> None:
    """min_accuracy above 1 is the evaluate step's business (tests use it to force a failed gate)."""
    check_local_params({"data_source": str(tmp_path), "min_accuracy": 1.01, "download": False})
    check_local_params({"data_source": str(tmp_path / "not-yet"), "download": True})  # the download creates it
