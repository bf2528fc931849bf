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
    clahe,
    decode_image,
    finish_image,
    float_chw_to_uint8,
    image_to_uint8,
    load_image_file,
    open_image,
    prepare,
    prepare_uint8,
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


def test_clahe_stretches_each_region_by_its_own_histogram() -> None:
    """A dark low-contrast half beside a bright one: CLAHE stretches the dark half, and what it makes of the
    outer columns depends on their own tile only, while global equalization changes them when the far half
    changes."""
    gen = torch.Generator().manual_seed(0)
    img = torch.empty(1, 3, 32, 32, dtype=torch.uint8)
    img[..., :16] = torch.randint(10, 30, (1, 3, 32, 16), generator=gen, dtype=torch.uint8)
    img[..., 16:] = torch.randint(200, 250, (1, 3, 32, 16), generator=gen, dtype=torch.uint8)
    other = img.clone()
    other[..., 16:] = torch.randint(100, 250, (1, 3, 32, 16), generator=gen, dtype=torch.uint8)
    local = clahe(img)
    assert local.shape == img.shape and local.dtype == torch.uint8
    assert local[..., :8].float().std() > 3 * img[..., :8].float().std()
    # Columns 0-3 lie outside the first tile centre (x = 3.5): only the first tile column maps them.
    assert torch.equal(clahe(other)[..., :4], local[..., :4])
    equalize = PreprocessConfig(contrast="equalize")
    assert not torch.equal(prepare_uint8(other, equalize)[..., :4], prepare_uint8(img, equalize)[..., :4])


def test_clahe_is_monotone_within_a_tile_and_flat_stays_flat() -> None:
    """One tile (8x8): a single mapping, so brighter never becomes darker; a constant image stays constant."""
    ramp = torch.arange(64, dtype=torch.uint8).mul(3).view(1, 1, 8, 8).expand(1, 3, 8, 8).contiguous()
    out = clahe(ramp).flatten(2)
    assert torch.all(out[..., 1:] >= out[..., :-1])
    flat = clahe(torch.full((2, 3, 32, 32), 77, dtype=torch.uint8))
    assert torch.all(flat == flat[0, 0, 0, 0])


@pytest.mark.parametrize("contrast", ["equalize", "clahe", "none"])
def test_prepare_is_per_image_and_its_uint8_step_is_the_same_path(contrast: str) -> None:
    """Training applies `prepare_uint8` once to the whole split; that must equal `prepare` of any batch."""
    batch = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    cfg = PreprocessConfig(contrast=contrast)
    whole = prepare_uint8(batch, cfg)
    assert whole.dtype == torch.uint8 and whole.shape == (6, 3, 32, 32)
    assert torch.equal(whole.float().div(255.0), prepare(batch, cfg))
    assert torch.equal(prepare(batch[2:4], cfg), prepare(batch, cfg)[2:4])


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
        PreprocessConfig(contrast="retinex")


def _encoded(fmt: str, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (12, 10), (200, 10, 10) if mode == "RGB" else 1).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "WEBP", "BMP", "ICO"])
def test_formats_outside_the_allowlist_are_refused_by_name(fmt: str) -> None:
    """Regression (red team, issue 17): GIF, TIFF and WebP bytes were decoded (sent as 'PNG'); only
    PNG/JPEG/PPM are read now, and the error names the format and what is accepted."""
    with pytest.raises(ImageDecodeError) as info:
        decode_image(_encoded(fmt), source="instances[0].b64")
    assert str(info.value) == f"instances[0].b64: image format {fmt} is not accepted; send one of PNG, JPEG, PPM"


@pytest.mark.parametrize(
    ("fmt", "mode"), [("PNG", "RGB"), ("PNG", "P"), ("JPEG", "RGB"), ("PPM", "RGB"), ("MPO", "RGB")]
)
def test_allowed_formats_decode(fmt: str, mode: str) -> None:
    """PNG (any mode), JPEG (MPO is a JPEG with a second picture, as phone cameras write them) and PPM."""
    img = decode_image(_encoded(fmt, mode), source="x")
    assert img.mode == "RGB" and img.size == (12, 10)


def test_open_image_reads_the_header_only() -> None:
    """The size is known, and checked, before any pixel is decoded (the predictor sums it per request)."""
    buf = io.BytesIO()
    Image.new("P", (2000, 2000)).save(buf, "PNG", optimize=True)
    img = open_image(buf.getvalue(), source="x")
    assert img.size == (2000, 2000) and img.format == "PNG"
    assert img._im is None  # nothing decoded yet (Pillow allocates the pixels in load())
    with pytest.raises(ImageDecodeError, match="4000000 pixels, limit is 1000"):
        open_image(buf.getvalue(), source="x", max_pixels=1000)
    assert finish_image(img, source="x").size == (2000, 2000)


def test_training_data_formats_pass_the_allowlist(gtsrb_root: Path) -> None:
    """GTSRB's training images are PPM files; every one the archive holds opens under the allowlist."""
    training = gtsrb_root / "gtsrb" / "GTSRB" / "Training"
    suffixes = {p.suffix for p in training.rglob("*") if p.is_file() and p.suffix != ".csv"}
    assert suffixes == {".ppm"}, suffixes
    for class_dir in sorted(training.iterdir())[:43]:
        path = next(iter(sorted(class_dir.glob("*.ppm"))))
        assert open_image(path.read_bytes(), source=str(path)).format == "PPM"
