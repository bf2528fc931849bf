"""Loading a model never runs code from its files: a malicious pickle is refused in every slot.

The payload's `__reduce__` would create a marker file when unpickled; each case asserts a clear
error AND that the marker does not exist, so "refused after running it" would fail too.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from tests.conftest import make_model_dir
from tsr.core.models import CONFIG_FILE, VARIANT_FILES, WEIGHTS_FILE, load_model_dir


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "pwned"))  # type: ignore[return-value]


def _evil_bytes(marker: Path) -> bytes:
    return pickle.dumps({"weights": _Payload(marker)})


def test_pickle_in_place_of_safetensors_weights_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    model_dir = make_model_dir(tmp_path / "model")
    (model_dir / WEIGHTS_FILE).write_bytes(_evil_bytes(marker))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model_dir(model_dir)
    assert not marker.exists()


@pytest.mark.parametrize("variant", sorted(VARIANT_FILES))
def test_pickle_in_place_of_a_torchscript_variant_is_refused(tmp_path: Path, variant: str) -> None:
    marker = tmp_path / "pwned"
    model_dir = make_model_dir(tmp_path / "model")
    config = json.loads((model_dir / CONFIG_FILE).read_text())
    engine = torch.backends.quantized.engine if variant == "int8" else None
    (model_dir / CONFIG_FILE).write_text(json.dumps({**config, "variant": variant, "quant_engine": engine}))
    # Both a bare pickle and a zip archive smuggling the pickle as its data.pkl.
    (model_dir / VARIANT_FILES[variant]).write_bytes(_evil_bytes(marker))
    with pytest.raises(ValueError, match="not a loadable TorchScript archive"):
        load_model_dir(model_dir)
    with zipfile.ZipFile(model_dir / VARIANT_FILES[variant], "w") as archive:
        for name in ("constants.pkl", "data.pkl"):  # TorchScript's restricted unpickler reads both
            archive.writestr(f"archive/{name}", _evil_bytes(marker))
        archive.writestr("archive/version", "3\n")
    with pytest.raises(ValueError, match="not a loadable TorchScript archive") as refused:
        load_model_dir(model_dir)
    assert "constants.pkl: file not found" not in str(refused.value)  # it got as far as unpickling
    assert not marker.exists()


def test_torch_load_with_weights_only_refuses_code(tmp_path: Path) -> None:
    """Where a torch pickle is ever read (checkpoints from elsewhere), weights_only=True is the rule."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state": _Payload(marker)}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert not marker.exists()
