"""The KFP launcher stand-in's artifact upload (tests/kfp_launcher.py), without a pod: what it does with a file, a
directory and an output the step wrote nothing for (KFP's own launcher warns and goes on; so must this)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import kfp_launcher


class RecordingClient:
    def __init__(self) -> None:
        self.put: list[tuple[str, str, str]] = []

    def fput_object(self, bucket: str, key: str, path: str) -> None:
        self.put.append((bucket, key, Path(path).read_text()))


def test_upload_sends_files_and_skips_an_output_the_step_did_not_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(kfp_launcher, "LOCAL_ROOT", f"{tmp_path}/")
    (tmp_path / "b" / "run" / "model").mkdir(parents=True)
    (tmp_path / "b" / "run" / "model" / "config.json").write_text("{}")
    (tmp_path / "b" / "run" / "metrics").write_text("m")
    client = RecordingClient()
    assert kfp_launcher.upload(client, "minio://b/run/model") == 1  # type: ignore[arg-type]
    assert kfp_launcher.upload(client, "minio://b/run/metrics") == 1  # type: ignore[arg-type]
    assert client.put == [("b", "run/model/config.json", "{}"), ("b", "run/metrics", "m")]
    # e.g. the evaluate step's `confusion` (ClassificationMetrics): metadata in the executor output, no file
    assert kfp_launcher.upload(client, "minio://b/run/confusion") == 0  # type: ignore[arg-type]
    assert len(client.put) == 2
    assert "minio://b/run/confusion: local path" in capsys.readouterr().out
