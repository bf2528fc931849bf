"""Request payloads (KServe V1 JSON, V2 InferRequest) -> one uint8 (N, 3, S, S) batch.

Every image, whatever it arrived as, ends up as uint8 at the model's size through
`tsr.core.preprocessing`, so the predictor has exactly one path into the model. Client mistakes
raise `InvalidInput` (HTTP 400) naming the instance, the field and the limit, because a
bare "bad request" is useless to whoever has to fix the client.

Decoding is two steps, `plan_*` then `DecodePlan.run`: the plan checks everything that is cheap to
check (shapes, base64, every encoded image's format and size from its header, and the pixels of all
of them together against `max_request_pixels`) without decoding a single pixel, so the predictor can
refuse a decompression-amplification request, or reserve its pixels from the process's decoding
budget, before paying for it. `decode_v1`/`decode_v2`/`decode_raw_image` do both steps at once.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest
from PIL import Image

from serving.config import CodecLimits
from tsr.core.preprocessing import (
    ImageDecodeError,
    finish_image,
    float_chw_to_uint8,
    image_to_uint8,
    open_image,
    resize_uint8,
)

SUPPORTED_V2_DATATYPES = ("BYTES", "UINT8", "FP32")


class Rejected(InvalidInput):
    """A client mistake (HTTP 400, gRPC INVALID_ARGUMENT) with a machine-readable reason for metrics.

    `category` (the metric's `reason` label) is one of `serving.monitoring.metrics.REJECTION_REASONS`.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.category = reason


def _check_batch(count: int, where: str, limits: CodecLimits) -> None:
    if count == 0:
        raise Rejected("empty_batch", f"{where}: no images in the request; send 1 to max_batch={limits.max_batch}")
    if count > limits.max_batch:
        raise Rejected(
            "batch_too_large", f"{where}: {count} images in one request, limit is max_batch={limits.max_batch}"
        )


def _b64decode(text: str | bytes, where: str, limits: CodecLimits) -> bytes:
    # base64 inflates by 4/3; checking the encoded length first avoids decoding a huge string.
    if len(text) > limits.max_image_bytes * 4 // 3 + 4:
        raise Rejected(
            "image_too_large",
            f"{where}: encoded image is {len(text)} characters, limit is {limits.max_image_bytes} bytes",
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Rejected("undecodable_image", f"{where}: invalid base64 ({exc})") from exc


@dataclass
class _Encoded:
    """An encoded image whose header has been read and checked; its pixels are not decoded yet."""

    image: Image.Image
    where: str


@dataclass
class DecodePlan:
    """One request checked down to its image headers; `run()` decodes what is left (in a worker thread).

    `parts` are, in request order, batches that are already tensors (raw tensors cost nothing more) and
    encoded images still to decode; `pixels` is the sum of those images' pixels, as their headers declare.
    """

    image_size: int
    limits: CodecLimits
    where: str  # the field that holds the images ("instances", "inputs[0] ('image')", "body")
    parts: list[torch.Tensor | _Encoded] = field(default_factory=list)
    pixels: int = 0

    def add_encoded(self, data: bytes, where: str) -> None:
        """Read the image's header, check its format and size, and count its pixels toward the request's."""
        limits = self.limits
        if len(data) > limits.max_image_bytes:
            raise Rejected(
                "image_too_large",
                f"{where}: image is {len(data)} bytes, limit is max_image_bytes={limits.max_image_bytes}",
            )
        try:
            # The per-image limit is checked below, with the request's own wording and reason.
            image = open_image(data, source=where, max_pixels=sys.maxsize)
        except ImageDecodeError as exc:
            raise Rejected("undecodable_image", str(exc)) from exc
        except MemoryError:
            raise
        except Exception as exc:  # whatever untrusted bytes make a header parser raise: the client's mistake
            raise Rejected("undecodable_image", f"{where}: cannot decode image ({type(exc).__name__}: {exc})") from exc
        width, height = image.size
        _check_pixels(height, width, where, limits)
        self.pixels += width * height
        if self.pixels > limits.max_request_pixels:
            raise Rejected(
                "request_too_large",
                f"{self.where}: the encoded images hold more than max_request_pixels={limits.max_request_pixels} "
                f"pixels in one request ({self.pixels} up to {where}); send fewer or smaller images per request",
            )
        self.parts.append(_Encoded(image, where))

    @property
    def pending(self) -> bool:
        """Whether `run()` still has images to decode (otherwise it only concatenates tensors)."""
        return any(isinstance(p, _Encoded) for p in self.parts)

    def run(self) -> torch.Tensor:
        """Decode the encoded images and return the whole request as one (N, 3, S, S) uint8 batch."""
        batches = [p if isinstance(p, torch.Tensor) else _finish(p, self.image_size).unsqueeze(0) for p in self.parts]
        self.parts = []  # the encoded bytes are not needed any more
        return torch.cat(batches)


def _finish(encoded: _Encoded, image_size: int) -> torch.Tensor:
    try:
        img = finish_image(encoded.image, source=encoded.where)
    except ImageDecodeError as exc:
        raise Rejected("undecodable_image", str(exc)) from exc
    except MemoryError:
        raise
    except Exception as exc:
        # Pillow's decoders raise more than OSError/ValueError on corrupt input: a PNG whose chunk
        # lengths were damaged raises SyntaxError from load() (found by tests/serving/test_fuzz.py),
        # other plugins struct.error, IndexError, EOFError. Whatever untrusted bytes make the
        # decoder raise, the client sent an undecodable image: a 400, not a 500.
        raise Rejected(
            "undecodable_image", f"{encoded.where}: cannot decode image ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        encoded.image.close()
    return image_to_uint8(img, image_size)


def decode_encoded_image(data: bytes, where: str, image_size: int, limits: CodecLimits) -> torch.Tensor:
    """PNG/JPEG/PPM bytes -> (3, S, S) uint8, through the shared decoder and its format and pixel checks."""
    plan = DecodePlan(image_size, limits, where)
    plan.add_encoded(data, where)
    return plan.run()[0]


def _check_pixels(height: int, width: int, where: str, limits: CodecLimits) -> None:
    if height < 1 or width < 1:
        raise Rejected("bad_shape", f"{where}: image is {height}x{width}, both sides must be >= 1")
    if height * width > limits.max_pixels:
        raise Rejected(
            "image_too_large",
            f"{where}: image is {height}x{width} = {height * width} pixels, limit is max_pixels={limits.max_pixels}",
        )


def uint8_hwc_to_batch(arr: np.ndarray, where: str, image_size: int, limits: CodecLimits) -> torch.Tensor:
    """Integer (N, H, W, 3) in 0..255 -> (N, 3, S, S) uint8."""
    if arr.dtype.kind not in "iu":
        raise Rejected("bad_dtype", f"{where}: uint8 tensor must hold integers 0..255, got dtype {arr.dtype}")
    if arr.ndim != 4 or arr.shape[3] != 3:
        raise Rejected("bad_shape", f"{where}: uint8 tensor must have shape (H, W, 3), got {tuple(arr.shape[1:])}")
    _check_pixels(int(arr.shape[1]), int(arr.shape[2]), where, limits)
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise Rejected("bad_dtype", f"{where}: uint8 values must lie in 0..255, got {arr.min()}..{arr.max()}")
    batch = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.uint8)).permute(0, 3, 1, 2).contiguous()
    return resize_uint8(batch, image_size)


def float_chw_to_batch(arr: np.ndarray, where: str, image_size: int, limits: CodecLimits) -> torch.Tensor:
    """Float (N, 3, H, W) in [0, 1] -> (N, 3, S, S) uint8, so floats share the uint8 path."""
    if arr.dtype.kind != "f":
        raise Rejected("bad_dtype", f"{where}: float tensor must hold numbers in [0, 1], got dtype {arr.dtype}")
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise Rejected("bad_shape", f"{where}: float tensor must have shape (3, H, W), got {tuple(arr.shape[1:])}")
    _check_pixels(int(arr.shape[2]), int(arr.shape[3]), where, limits)
    if not np.isfinite(arr).all():
        raise Rejected("bad_dtype", f"{where}: float tensor contains NaN or infinity; values must lie in [0, 1]")
    try:
        batch = float_chw_to_uint8(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)))
    except ValueError as exc:
        raise Rejected("bad_dtype", f"{where}: {exc}") from exc
    return resize_uint8(batch, image_size)


def _as_array(value: Any, where: str) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise Rejected("bad_shape", f"{where}: not a rectangular numeric tensor ({exc})") from exc
    if arr.dtype.kind not in "iuf":
        raise Rejected("bad_dtype", f"{where}: tensor must hold numbers, got {arr.dtype} values")
    return arr


# ---- V1 ------------------------------------------------------------------------------------------


def _v1_instance(instance: Any, where: str, plan: DecodePlan) -> None:
    image_size, limits = plan.image_size, plan.limits
    if isinstance(instance, dict):
        field = "b64"
        payload: Any = instance.get("b64")
        if payload is None and isinstance(instance.get("image_bytes"), dict):
            field, payload = "image_bytes.b64", instance["image_bytes"].get("b64")
        if not isinstance(payload, str):
            raise Rejected(
                "malformed_json",
                f"{where}: expected {{'b64': <base64 image>}} or {{'image_bytes': {{'b64': ...}}}}, "
                f"got keys {sorted(instance)}",
            )
        plan.add_encoded(_b64decode(payload, f"{where}.{field}", limits), f"{where}.{field}")
        return
    if isinstance(instance, list):
        arr = _as_array(instance, where)
        if arr.ndim != 3:
            raise Rejected(
                "bad_shape", f"{where}: tensor must be uint8 (H, W, 3) or float (3, H, W), got shape {tuple(arr.shape)}"
            )
        # JSON has no dtypes: integers mean uint8 HWC, any decimal point means float CHW in [0, 1].
        if arr.dtype.kind in "iu":
            plan.parts.append(uint8_hwc_to_batch(arr[None], where, image_size, limits))
        else:
            plan.parts.append(float_chw_to_batch(arr[None], where, image_size, limits))
        return
    raise Rejected(
        "malformed_json",
        f"{where}: expected an object with 'b64' or a nested list tensor, got {type(instance).__name__}",
    )


def plan_v1(body: Any, image_size: int, limits: CodecLimits) -> DecodePlan:
    """`{"instances": [...]}` (or the TF-Serving style `{"inputs": [...]}`), checked; `run()` gives (N, 3, S, S)."""
    key = "instances" if isinstance(body, dict) and "instances" in body else "inputs"
    if not isinstance(body, dict) or not isinstance(body.get(key), list):
        raise Rejected("malformed_json", "request body must be a JSON object with an 'instances' list")
    instances: list[Any] = body[key]
    _check_batch(len(instances), key, limits)
    plan = DecodePlan(image_size, limits, key)
    for i, inst in enumerate(instances):
        _v1_instance(inst, f"{key}[{i}]", plan)
    return plan


def decode_v1(body: Any, image_size: int, limits: CodecLimits) -> torch.Tensor:
    """`{"instances": [...]}` (or the TF-Serving style `{"inputs": [...]}`) -> (N, 3, S, S) uint8."""
    return plan_v1(body, image_size, limits).run()


def plan_raw_image(body: bytes, image_size: int, limits: CodecLimits) -> DecodePlan:
    """A V1 body that is itself a PNG/JPEG/PPM file (content-type image/* or octet-stream), checked."""
    if not body:
        raise Rejected("empty_batch", "request body is empty; send one PNG, JPEG or PPM image")
    plan = DecodePlan(image_size, limits, "body")
    plan.add_encoded(body, "body")
    return plan


def decode_raw_image(body: bytes, image_size: int, limits: CodecLimits) -> torch.Tensor:
    """A V1 body that is itself a PNG/JPEG/PPM file (content-type image/* or octet-stream) -> (1, 3, S, S)."""
    return plan_raw_image(body, image_size, limits).run()


# ---- V2 ------------------------------------------------------------------------------------------


def _flatten(values: Any) -> list[Any]:
    if isinstance(values, np.ndarray):
        return list(values.reshape(-1))
    if isinstance(values, list | tuple):
        out: list[Any] = []
        for v in values:
            out.extend(_flatten(v) if isinstance(v, list | tuple | np.ndarray) else [v])
        return out
    return [values]


def _v2_data(inp: InferInput) -> Any:
    # Binary extension (REST) and gRPC raw_input_contents carry the tensor as raw bytes; JSON as `data`.
    if inp._raw_data is not None:
        try:
            return inp.as_numpy()
        except (ValueError, struct.error) as exc:  # struct.error: a BYTES length prefix past the end
            raise Rejected("bad_shape", f"raw tensor data does not fit shape {list(inp.shape)}: {exc}") from exc
    return inp.data


def _v2_shape(inp: InferInput, where: str) -> list[int]:
    """The declared shape as ints; the binary extension hands kserve's JSON header over unvalidated."""
    shape = inp.shape
    if not isinstance(shape, list | tuple) or not all(
        isinstance(s, int | np.integer) and not isinstance(s, bool) for s in shape
    ):
        raise Rejected("bad_shape", f"{where}: shape must be a list of integers, got {repr(shape)[:80]}")
    return [int(s) for s in shape]


def _v2_bytes(inp: InferInput, where: str, plan: DecodePlan) -> None:
    limits = plan.limits
    shape = _v2_shape(inp, where)
    elements = _flatten(_v2_data(inp))
    declared = math.prod(shape) if shape else 0
    if declared != len(elements):
        raise Rejected("bad_shape", f"{where}: shape {shape} declares {declared} images but data holds {len(elements)}")
    _check_batch(len(elements), where, limits)
    for i, element in enumerate(elements):
        item = f"{where}.data[{i}]"
        if isinstance(element, str):
            data = _b64decode(element, item, limits)
        elif isinstance(element, bytes | bytearray):
            # gRPC and the binary extension carry raw bytes, which may be base64 text or the image itself.
            data = _raw_or_base64(bytes(element))
        else:
            raise Rejected("bad_dtype", f"{item}: expected a base64 string, got {type(element).__name__}")
        plan.add_encoded(data, item)


def _raw_or_base64(data: bytes) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return data


def _v2_tensor(inp: InferInput, where: str, image_size: int, limits: CodecLimits) -> torch.Tensor:
    shape = _v2_shape(inp, where)
    channels_last = inp.datatype == "UINT8"
    expected = "[N, H, W, 3] (or [H, W, 3])" if channels_last else "[N, 3, H, W] (or [3, H, W])"
    if len(shape) == 3:
        shape = [1, *shape]
    if len(shape) != 4 or min(shape) < 0 or (shape[3] if channels_last else shape[1]) != 3:
        raise Rejected("bad_shape", f"{where}: {inp.datatype} shape must be {expected}, got {list(inp.shape)}")
    _check_batch(shape[0], where, limits)
    height, width = (shape[1], shape[2]) if channels_last else (shape[2], shape[3])
    _check_pixels(height, width, where, limits)
    arr = _as_array(_v2_data(inp), f"{where}.data")
    if arr.size != math.prod(shape):
        raise Rejected(
            "bad_shape", f"{where}: shape {list(inp.shape)} needs {math.prod(shape)} values, data holds {arr.size}"
        )
    arr = arr.reshape(shape)
    if channels_last:
        return uint8_hwc_to_batch(arr, where, image_size, limits)
    return float_chw_to_batch(arr.astype(np.float32, copy=False), where, image_size, limits)


def plan_v2(request: InferRequest, image_size: int, limits: CodecLimits) -> DecodePlan:
    """An InferRequest with one BYTES, UINT8 or FP32 input, checked; `run()` gives (N, 3, S, S) uint8."""
    inputs: Sequence[InferInput] = request.inputs or []
    if len(inputs) != 1:
        raise Rejected("bad_shape", f"inputs: expected exactly one input tensor, got {len(inputs)}")
    inp = inputs[0]
    where = f"inputs[0] ({inp.name!r})"
    plan = DecodePlan(image_size, limits, where)
    if inp.datatype == "BYTES":
        _v2_bytes(inp, where, plan)
    elif inp.datatype in ("UINT8", "FP32"):
        plan.parts.append(_v2_tensor(inp, where, image_size, limits))
    else:
        raise Rejected(
            "bad_dtype", f"{where}: datatype {inp.datatype} is not supported; use one of {SUPPORTED_V2_DATATYPES}"
        )
    return plan


def decode_v2(request: InferRequest, image_size: int, limits: CodecLimits) -> torch.Tensor:
    """An InferRequest with one BYTES, UINT8 or FP32 input -> (N, 3, S, S) uint8."""
    return plan_v2(request, image_size, limits).run()
