from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from tsr.core.preprocessing import (
    ImageDecodeError,
    PreprocessConfig,
    channel_stats,
    decode_image,
    float_chw_to_uint8,
    image_to_uint8,
    load_image_file,
    prepare,
    to_model_input,
)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_ppm_and_png_of_the_same_image_give_identical_tensors(gtsrb_root: Path) -> None:
    path = next((gtsrb_root / "gtsrb" / "GTSRB" / "Training" / "00014").glob("*.ppm"))
    from_ppm = load_image_file(path, 32)
    from_png = image_to_uint8(decode_image(_png(Image.open(path)), source="png"), 32)
    assert from_ppm.dtype == torch.uint8 and from_ppm.shape == (3, 32, 32)
    assert torch.equal(from_ppm, from_png)


def test_any_size_is_resized_to_the_model_size() -> None:
    img = Image.new("RGB", (97, 41), (200, 10, 10))
    out = image_to_uint8(decode_image(_png(img), source="x"), 32)
    assert out.shape == (3, 32, 32)
    assert int(out[0].float().mean()) == 200


def test_undecodable_bytes_name_the_source() -> None:
    with pytest.raises(ImageDecodeError, match=r"request\.instances\[3\]"):
        decode_image(b"not an image", source="request.instances[3]")


def test_pixel_limit_is_enforced_before_decoding() -> None:
    data = _png(Image.new("RGB", (300, 300)))
    with pytest.raises(ImageDecodeError, match="90000 pixels, limit is 1000"):
        decode_image(data, source="big", max_pixels=1000)


def test_model_input_is_standardized_channels_last() -> None:
    cfg = PreprocessConfig(contrast="none", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    batch = torch.full((2, 3, 32, 32), 255, dtype=torch.uint8)
    x = to_model_input(batch, cfg)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(x, torch.full_like(x, 2.0))


def test_equalize_spreads_a_dark_image_over_the_full_range() -> None:
    dark = torch.randint(0, 40, (1, 3, 32, 32), dtype=torch.uint8)
    out = prepare(dark, PreprocessConfig(contrast="equalize"))
    assert float(out.max()) > 0.9
    assert float(prepare(dark, PreprocessConfig(contrast="none")).max()) < 0.16


def test_prepare_rejects_wrong_dtype_and_shape() -> None:
    with pytest.raises(ValueError, match="uint8"):
        prepare(torch.zeros(1, 3, 32, 32), PreprocessConfig())
    with pytest.raises(ValueError, match="\\(N, 3, H, W\\)"):
        prepare(torch.zeros(1, 4, 32, 32, dtype=torch.uint8), PreprocessConfig())


def test_float_tensors_share_the_uint8_path() -> None:
    x = torch.rand(2, 3, 8, 8)
    assert float_chw_to_uint8(x).dtype == torch.uint8
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        float_chw_to_uint8(x * 3)
    with pytest.raises(ValueError, match="NaN"):
        float_chw_to_uint8(torch.full((1, 3, 2, 2), float("nan")))


def test_channel_stats_match_direct_computation() -> None:
    images = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    stats = channel_stats(images, chunk=7)
    x = images.double() / 255
    assert stats.mean() == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-9)
    assert stats.std() == pytest.approx(x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-6)


def test_config_round_trips_and_validates() -> None:
    cfg = PreprocessConfig(image_size=48, contrast="none", mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6))
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="contrast"):
        PreprocessConfig(contrast="clahe")
