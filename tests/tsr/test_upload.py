"""`tsr store upload`: a dataset into the store (real MinIO), read back by ingest byte for byte."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tsr.cli import app
from tsr.core.config import StoreConfig
from tsr.core.store import open_store
from tsr.local.upload import list_files, upload_tree


def invoke(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=env)


@pytest.fixture
def env(minio: StoreConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.delenv("TSR_DEBUG", raising=False)
    return {**minio.env(), "TSR_STATE_DIR": str(tmp_path / "state")}


def _ingest_fingerprint(env: dict[str, str], source: str, out: Path) -> Any:
    result = invoke(env, "ingest", "--source", source, "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_directory_upload_is_what_ingest_reads(
    gtsrb_small: Path, minio: StoreConfig, env: dict[str, str], tmp_path: Path
) -> None:
    result = invoke(env, "store", "upload", str(gtsrb_small), "s3://datasets/gtsrb-small", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    local = list_files(gtsrb_small)
    assert summary["uri"] == "s3://datasets/gtsrb-small" and summary["files"] == len(local) > 100
    assert summary["bytes"] == sum(p.stat().st_size for p in local)
    keys = open_store(minio, "datasets").list("gtsrb-small/")
    assert sorted(keys) == sorted(f"gtsrb-small/{p.relative_to(gtsrb_small).as_posix()}" for p in local)
    # A cluster run's ingest reads the prefix: the same images (sha256 of every file), the same split.
    from_store = _ingest_fingerprint(env, "s3://datasets/gtsrb-small", tmp_path / "a")
    from_disk = _ingest_fingerprint(env, str(gtsrb_small), tmp_path / "b")
    assert from_store["fingerprint"] == from_disk["fingerprint"]
    assert from_store["train"] == from_disk["train"] and from_store["val"] == from_disk["val"]


def test_archive_upload_extracts_first(gtsrb_small: Path, minio: StoreConfig, tmp_path: Path) -> None:
    archive = tmp_path / "small.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(gtsrb_small / "gtsrb" / "GTSRB" / "Training" / "00000", arcname="gtsrb/GTSRB/Training/00000")
    seen: list[tuple[int, int]] = []
    result = upload_tree(archive, "s3://datasets/", minio, workers=3, on_progress=lambda d, t: seen.append((d, t)))
    keys = open_store(minio, "datasets").list("")
    assert result.files == len(keys) > 0 and all(k.startswith("gtsrb/GTSRB/Training/00000/") for k in keys)
    assert seen[-1] == (result.files, result.files)
    again = upload_tree(archive, "s3://datasets", minio)  # repeating it overwrites: same objects, nothing else
    assert again.files == result.files and sorted(open_store(minio, "datasets").list("")) == sorted(keys)


def _archive_with(tmp_path: Path, name: str, link_to: str = "") -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        if link_to:
            info.type, info.linkname = tarfile.SYMTYPE, link_to
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    return path


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda tmp: [str(tmp / "missing"), "s3://datasets/x"], "does not exist"),
        (lambda tmp: [str(_plain_file(tmp)), "s3://datasets/x"], "neither a directory nor"),
        (lambda tmp: [str(tmp), "datasets/x"], "not an s3:// URI"),
        (lambda tmp: [str(tmp), "s3://Bad_Bucket/x"], "bucket"),
        (lambda tmp: [str(tmp), "s3://datasets/x", "--workers", "0"], "workers"),
    ],
)
def test_usage_errors_exit_2_and_upload_nothing(
    make_args: Any, message: str, minio: StoreConfig, env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "a.txt").write_text("a")
    result = invoke(env, "store", "upload", *make_args(tmp_path))
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert open_store(minio, "datasets").list("") == []


def _plain_file(tmp: Path) -> Path:
    path = tmp / "notes.txt"
    path.write_text("not an archive")
    return path


@pytest.mark.parametrize(("member", "link_to"), [("../escape.ppm", ""), ("signs/link.ppm", "/etc/passwd")])
def test_unsafe_archive_is_refused_before_any_upload(
    member: str, link_to: str, minio: StoreConfig, env: dict[str, str], tmp_path: Path
) -> None:
    result = invoke(env, "store", "upload", str(_archive_with(tmp_path, member, link_to)), "s3://datasets/x")
    assert result.exit_code == 1, result.output
    assert "unsafe archive member" in " ".join(result.output.split())
    assert not (tmp_path.parent / "escape.ppm").exists()
    assert open_store(minio, "datasets").list("") == []


def test_empty_directory_is_an_error(minio: StoreConfig, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no files to upload"):
        upload_tree(tmp_path / "empty", "s3://datasets/x", minio)
