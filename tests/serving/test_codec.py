"""The codec decodes real GTSRB images exactly as the training path reads them, and names every client mistake."""

from __future__ import annotations

import base64
import io
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest
from PIL import Image

from serving.codec import CodecLimits, Rejected, decode_raw_image, decode_v1, decode_v2
from tsr.core.preprocessing import float_chw_to_uint8, image_to_uint8, load_image_file, resize_uint8

SIZE = 32
LIMITS = CodecLimits()


@pytest.fixture(scope="module")
def sample_ppms(gtsrb_root: Path) -> list[Path]:
    training = gtsrb_root / "gtsrb" / "GTSRB" / "Training"
    return [next(iter(sorted((training / f"{c:05d}").glob("*.ppm")))) for c in (0, 14, 33)]


def _encode(path: Path, fmt: str) -> bytes:
    if fmt == "PPM":
        return path.read_bytes()
    buf = io.BytesIO()
    Image.open(path).convert("RGB").save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _v2(datatype: str, shape: list[int], data: list[Any]) -> InferRequest:
    return InferRequest(model_name="m", infer_inputs=[InferInput(name="x", shape=shape, datatype=datatype, data=data)])


@pytest.mark.parametrize("fmt", ["PNG", "PPM"])
def test_v1_b64_matches_training_read_exactly(sample_ppms: list[Path], fmt: str) -> None:
    expected = torch.stack([load_image_file(p, SIZE) for p in sample_ppms])
    body = {"instances": [{"b64": _b64(_encode(p, fmt))} for p in sample_ppms]}
    got = decode_v1(body, SIZE, LIMITS)
    assert got.dtype == torch.uint8 and got.shape == (3, 3, SIZE, SIZE)
    assert torch.equal(got, expected)


def test_v1_jpeg_and_image_bytes_wrapper_approximate(sample_ppms: list[Path]) -> None:
    expected = torch.stack([load_image_file(p, SIZE) for p in sample_ppms]).float()
    body = {"instances": [{"image_bytes": {"b64": _b64(_encode(p, "JPEG"))}} for p in sample_ppms]}
    got = decode_v1(body, SIZE, LIMITS).float()
    assert (got - expected).abs().mean() < 8.0


def test_v2_bytes_base64_and_raw(sample_ppms: list[Path]) -> None:
    expected = torch.stack([load_image_file(p, SIZE) for p in sample_ppms])
    encoded = [_encode(p, "PNG") for p in sample_ppms]
    assert torch.equal(decode_v2(_v2("BYTES", [3], [_b64(e) for e in encoded]), SIZE, LIMITS), expected)
    assert torch.equal(decode_v2(_v2("BYTES", [3], encoded), SIZE, LIMITS), expected)


def test_v2_binary_extension(sample_ppms: list[Path]) -> None:
    """Tensors sent with the binary-data extension reach the codec as kserve parses them off the wire."""
    expected = torch.stack([load_image_file(p, SIZE) for p in sample_ppms])
    pixels = expected.permute(0, 2, 3, 1).numpy()
    u8 = InferInput(name="x", shape=list(pixels.shape), datatype="UINT8")
    u8.set_data_from_numpy(pixels, binary_data=True)
    b64 = InferInput(name="x", shape=[len(sample_ppms)], datatype="BYTES")
    b64.set_data_from_numpy(np.array([_b64(_encode(p, "PNG")) for p in sample_ppms], dtype=np.object_))
    for inp in (u8, b64):
        body, json_length = InferRequest(model_name="m", infer_inputs=[inp]).to_rest()
        assert isinstance(body, bytes) and json_length is not None
        parsed = InferRequest.from_bytes(body, json_length, "m")
        assert torch.equal(decode_v2(parsed, SIZE, LIMITS), expected), inp.datatype


def test_v1_inputs_alias(sample_ppms: list[Path]) -> None:
    got = decode_v1({"inputs": [{"b64": _b64(sample_ppms[0].read_bytes())}]}, SIZE, LIMITS)
    assert torch.equal(got[0], load_image_file(sample_ppms[0], SIZE))
    with pytest.raises(InvalidInput, match=r"inputs\[1\]\.b64: invalid base64"):
        decode_v1({"inputs": [{"b64": _tiny_png()}, {"b64": "?"}]}, SIZE, LIMITS)


def test_any_size_image_is_resized_by_the_shared_path(sample_ppms: list[Path]) -> None:
    big = Image.open(sample_ppms[0]).convert("RGB").resize((77, 50))
    buf = io.BytesIO()
    big.save(buf, "PNG")
    got = decode_v1({"instances": [{"b64": _b64(buf.getvalue())}]}, SIZE, LIMITS)
    assert torch.equal(got[0], image_to_uint8(big, SIZE))


def test_tensors_v1_and_v2(sample_ppms: list[Path]) -> None:
    img = load_image_file(sample_ppms[1], SIZE)  # (3, S, S) uint8
    hwc = img.permute(1, 2, 0).numpy()
    chw = img.float().div(255.0)
    body = {"instances": [hwc.tolist(), chw.tolist()]}
    got = decode_v1(body, SIZE, LIMITS)
    assert torch.equal(got[0], img)
    assert torch.equal(got[1], float_chw_to_uint8(chw[None])[0])
    u8 = decode_v2(_v2("UINT8", [1, SIZE, SIZE, 3], hwc.reshape(-1).tolist()), SIZE, LIMITS)
    assert torch.equal(u8[0], img)
    fp = decode_v2(_v2("FP32", [3, SIZE, SIZE], chw.tolist()), SIZE, LIMITS)
    assert torch.equal(fp[0], img)
    small = np.full((8, 6, 3), 200, dtype=np.uint8)
    resized = decode_v1({"instances": [small.tolist()]}, SIZE, LIMITS)
    assert torch.equal(resized, resize_uint8(torch.from_numpy(small).permute(2, 0, 1)[None], SIZE))


def _tiny_png(w: int = 4, h: int = 4) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, "PNG")
    return _b64(buf.getvalue())


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ({}, ["'instances' list"]),
        ({"instances": []}, ["instances", "no images", "max_batch=2"]),
        ({"instances": [{"b64": "not base64!"}]}, ["instances[0].b64", "base64"]),
        ({"instances": [{"b64": _tiny_png()}, {"b64": _b64(b"GIF? no")}]}, ["instances[1].b64", "cannot decode"]),
        ({"instances": [{"b64": _tiny_png(50, 50)}]}, ["instances[0].b64", "2500", "max_pixels=100"]),
        ({"instances": [{"b64": _tiny_png()}] * 3}, ["3 images", "max_batch=2"]),
        ({"instances": [{"url": "x"}]}, ["instances[0]", "b64"]),
        ({"instances": [[[[1, 2]]]]}, ["instances[0]", "(H, W, 3)"]),
        ({"instances": [[[[0.5, float("nan")]] * 2] * 3]}, ["instances[0]", "NaN"]),
        ({"instances": [[[[1.5]]] * 3]}, ["instances[0]", "[0, 1]"]),
        ({"instances": [[[[300, 0, 0]]]]}, ["instances[0]", "0..255"]),
        ({"instances": [[[[1, 2, 3]], [[1, 2]]]]}, ["instances[0]", "rectangular"]),
        ({"instances": [[[["a", "b", "c"]]]]}, ["instances[0]", "numbers"]),
        ({"instances": [[[[0] * 3] * 11] * 11]}, ["instances[0]", "121", "max_pixels=100"]),
        ({"instances": ["hello"]}, ["instances[0]", "str"]),
    ],
)
def test_v1_errors_name_index_field_and_limit(body: dict[str, Any], needles: list[str]) -> None:
    with pytest.raises(InvalidInput) as info:
        decode_v1(body, SIZE, CodecLimits(max_batch=2, max_pixels=100))
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


@pytest.mark.parametrize(
    ("request_", "needles"),
    [
        (_v2("UINT8", [1, 2, 2], [0] * 4), ["inputs[0]", "[N, H, W, 3]"]),
        (_v2("FP32", [1, 2, 2, 3], [0.0] * 12), ["inputs[0]", "[N, 3, H, W]"]),
        (_v2("UINT8", [1, 2, 2, 3], [0] * 5), ["inputs[0]", "12", "5"]),
        (_v2("FP32", [3, 2, 2], [float("nan")] * 12), ["inputs[0]", "NaN"]),
        (_v2("INT32", [1], [0]), ["inputs[0]", "INT32", "BYTES"]),
        (_v2("BYTES", [2], ["@@@"]), ["declares 2", "holds 1"]),
        (_v2("BYTES", [1], ["@@@"]), ["inputs[0] ('x').data[0]", "base64"]),
        (_v2("BYTES", [3], [_tiny_png()] * 3), ["3 images", "max_batch=2"]),
        (_v2("UINT8", [3, 2, 2, 3], [0] * 36), ["3 images", "max_batch=2"]),
        (_v2("UINT8", [1, 20, 20, 3], [0] * 1200), ["400 pixels", "max_pixels=100"]),
        (InferRequest(model_name="m", infer_inputs=[]), ["exactly one input"]),
    ],
)
def test_v2_errors_name_input_field_and_limit(request_: InferRequest, needles: list[str]) -> None:
    with pytest.raises(InvalidInput) as info:
        decode_v2(request_, SIZE, CodecLimits(max_batch=2, max_pixels=100))
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


@pytest.mark.parametrize("shape", ["ab", None, True, [1.5, 1, 1, 3], [True, 1, 1, 3], [1, 1, 1, "3"], [[1], 1, 1, 3]])
@pytest.mark.parametrize("datatype", ["BYTES", "UINT8"])
def test_v2_shape_that_is_not_a_list_of_integers_is_rejected(shape: Any, datatype: str) -> None:
    """Regression (fuzzing): the binary extension's JSON header reaches the codec unvalidated by kserve;
    a string or None shape was a TypeError/ValueError (HTTP 500), a float or bool one was silently truncated."""
    data: list[Any] = [_tiny_png()] if datatype == "BYTES" else [1, 2, 3]
    with pytest.raises(Rejected) as info:
        decode_v2(_v2(datatype, shape, data), SIZE, LIMITS)
    assert info.value.category == "bad_shape"
    assert "shape must be a list of integers" in str(info.value)


def test_v2_raw_bytes_with_a_cut_length_prefix_is_rejected() -> None:
    """Regression (fuzzing): a BYTES element whose 4-byte length runs past the data (gRPC raw contents)
    raised struct.error from kserve's deserializer (gRPC INTERNAL) instead of INVALID_ARGUMENT."""
    inp = InferInput(name="x", shape=[1], datatype="BYTES")
    inp._raw_data = struct.pack("<I", 1000) + b"too short"
    with pytest.raises(Rejected) as info:
        decode_v2(InferRequest(model_name="m", infer_inputs=[inp]), SIZE, LIMITS)
    assert info.value.category == "bad_shape"


def test_png_with_a_damaged_chunk_length_is_rejected() -> None:
    """Regression (fuzzing): Pillow raises SyntaxError ("broken PNG file") from load() when an IDAT
    length is wrong; that escaped the shared decoder's error handling and was an HTTP 500. The shared
    decoder (tsr.core.preprocessing.decode_image) now turns it into its own error, for ingest too."""
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    png = bytearray(buf.getvalue())
    at = png.index(b"IDAT") - 4
    png[at : at + 4] = struct.pack(">I", 100)  # the decoder then reads a chunk header from compressed data
    with pytest.raises(Rejected) as info:
        decode_raw_image(bytes(png), SIZE, LIMITS)
    assert info.value.category == "undecodable_image"
    assert "body: cannot decode image (broken PNG file" in str(info.value)
    with pytest.raises(Rejected, match=r"instances\[0\]\.b64: cannot decode image"):
        decode_v1({"instances": [{"b64": _b64(bytes(png))}]}, SIZE, LIMITS)


def _palette_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("P", (side, side), 0).save(buf, "PNG", optimize=True)
    return buf.getvalue()


@pytest.mark.parametrize("protocol", ["v1", "v2"])
def test_request_pixels_are_budgeted_from_the_headers(protocol: str) -> None:
    """Regression (red team, issue 17): a few hundred bytes of PNG declare millions of pixels; the pixels of
    all images of a request together are checked against max_request_pixels before any is decoded."""
    limits = CodecLimits(max_pixels=10_000, max_request_pixels=25_000)
    image = _palette_png(100)  # 10,000 pixels in ~100 bytes
    three = [_b64(image)] * 3
    if protocol == "v1":
        send: Any = lambda images: decode_v1({"instances": [{"b64": i} for i in images]}, SIZE, limits)  # noqa: E731
        where = "instances"
    else:
        send = lambda images: decode_v2(_v2("BYTES", [len(images)], images), SIZE, limits)  # noqa: E731
        where = "inputs[0] ('x')"
    with pytest.raises(Rejected) as info:
        send(three)
    assert info.value.category == "request_too_large"
    assert str(info.value).startswith(f"{where}: the encoded images hold more than max_request_pixels=25000 pixels")
    assert send(three[:2]).shape == (2, 3, SIZE, SIZE)  # 20,000 pixels: within the budget


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "WEBP"])
def test_formats_outside_png_jpeg_ppm_are_refused(fmt: str) -> None:
    """Regression (red team, issue 17): GIF/TIFF/WebP bytes sent as PNG were decoded."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, fmt)
    with pytest.raises(Rejected) as info:
        decode_raw_image(buf.getvalue(), SIZE, LIMITS)
    assert info.value.category == "undecodable_image"
    assert str(info.value) == f"body: image format {fmt} is not accepted; send one of PNG, JPEG, PPM"
