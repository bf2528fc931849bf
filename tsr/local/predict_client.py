"""A client for the predictor's V1 and V2 HTTP endpoints: image files in, top-k per file out.

Plain Python (httpx, no rich), so `tsr predict` renders and scripts can import it. Every failure
is a `PredictError` whose message a person can act on: the URL that was unreachable, or the
server's own `{"error": ...}` text with the file it was about.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx

Protocol = Literal["v1", "v2"]
PROTOCOLS: tuple[Protocol, ...] = ("v1", "v2")
FILES_PER_REQUEST = 32  # well under the predictor's default of 256 images and 64 MiB per request
# Where the server's message points at one image of the request: V1 instances[i], V2 inputs[0] (...).data[i].
_ITEM = re.compile(r"(instances\[(\d+)\]|inputs\[\d+\] \('[^']*'\)\.data\[(\d+)\])")


class PredictError(RuntimeError):
    """The predictor could not be reached or refused the request; the message says which and why."""


@dataclass(frozen=True)
class Prediction:
    """Top-k classes of one file, most probable first (a class name is None where the server sent none)."""

    file: Path
    top_k: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"file": str(self.file), **self.top_k[0], "top_k": self.top_k}


@dataclass(frozen=True)
class PredictResult:
    url: str
    model: str
    protocol: Protocol
    predictions: list[Prediction]
    model_version: str | None = None  # V2 names the registry version it served from

    @property
    def returned_k(self) -> int:
        """How many classes the server sent per image (the predictor sends a fixed top-3 today)."""
        return min((len(p.top_k) for p in self.predictions), default=0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "model": self.model,
            "protocol": self.protocol,
            "model_version": self.model_version,
            "predictions": [p.to_dict() for p in self.predictions],
        }


def endpoint(url: str, model: str, protocol: Protocol) -> str:
    base = url.rstrip("/")
    return f"{base}/v1/models/{model}:predict" if protocol == "v1" else f"{base}/v2/models/{model}/infer"


def request_body(images: Sequence[bytes], protocol: Protocol) -> dict[str, Any]:
    """The file bytes as they are on disk, base64: the server decodes PNG/JPEG/PPM of any size."""
    encoded = [base64.b64encode(data).decode("ascii") for data in images]
    if protocol == "v1":
        return {"instances": [{"b64": item} for item in encoded]}
    return {"inputs": [{"name": "image", "shape": [len(encoded)], "datatype": "BYTES", "data": encoded}]}


def parse_v1(body: Any, count: int, top_k: int) -> list[list[dict[str, Any]]]:
    predictions = body.get("predictions") if isinstance(body, dict) else None
    if not isinstance(predictions, list) or len(predictions) != count:
        raise PredictError(f"unexpected V1 response: expected {count} predictions, got {str(body)[:200]}")
    rows = []
    for pred in predictions:
        ranked = pred.get("top_k") or [pred]
        rows.append([_entry(e.get("class_id"), e.get("class_name"), e.get("probability")) for e in ranked[:top_k]])
    return rows


def parse_v2(body: Any, count: int, top_k: int) -> list[list[dict[str, Any]]]:
    """V2 sends top_k_class_id / top_k_probability as [N, k] and a class name for the top-1 only;
    other ranks get the name the same response gives that class elsewhere, else None."""
    outputs = {o.get("name"): o for o in body.get("outputs", [])} if isinstance(body, dict) else {}
    try:
        ids = outputs["top_k_class_id"]
        probs = outputs["top_k_probability"]["data"]
        k = int(ids["shape"][1])
        top1_names = outputs["class_name"]["data"]
        top1_ids = outputs["class_id"]["data"]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise PredictError(f"unexpected V2 response (no {exc} output): {str(body)[:200]}") from exc
    if len(top1_ids) != count or len(ids["data"]) != count * k:
        raise PredictError(f"unexpected V2 response: expected {count} images, got {len(top1_ids)}")
    names = dict(zip(top1_ids, top1_names, strict=True))
    rows = []
    for i in range(count):
        ranked = zip(ids["data"][i * k : (i + 1) * k], probs[i * k : (i + 1) * k], strict=True)
        rows.append([_entry(c, names.get(c), p) for c, p in ranked][:top_k])
    return rows


def _entry(class_id: Any, class_name: Any, probability: Any) -> dict[str, Any]:
    return {
        "class_id": int(class_id),
        "class_name": None if class_name is None else str(class_name),
        "probability": float(probability),
    }


def server_message(response: httpx.Response, files: Sequence[Path]) -> str:
    """The server's `{"error": ...}` (or its body), with the file an `instances[i]` refers to."""
    try:
        body = response.json()
        message = str(body.get("error") or body.get("detail") or body) if isinstance(body, dict) else str(body)
    except ValueError:
        message = response.text.strip()[:500] or response.reason_phrase

    def name(match: re.Match[str]) -> str:
        index = int(match.group(2) or match.group(3))
        return f"{match.group(1)} ({files[index]})" if index < len(files) else match.group(1)

    return _ITEM.sub(name, message, count=1)


def predict_files(
    url: str,
    model: str,
    files: Sequence[Path],
    protocol: Protocol = "v1",
    top_k: int = 3,
    timeout_s: float = 60.0,
    on_progress: Callable[[int, int], None] | None = None,
    client: httpx.Client | None = None,
) -> PredictResult:
    """Send the files (in requests of FILES_PER_REQUEST) and return each file's top-k.

    `on_progress(done, total)` counts files answered. Raises `PredictError` for an unreachable
    server, a non-2xx answer (with the server's message) or a response of the wrong shape.
    """
    predictions: list[Prediction] = []
    version: str | None = None
    target = endpoint(url, model, protocol)
    with contextlib.nullcontext(client) if client is not None else httpx.Client(timeout=timeout_s) as http:
        for start in range(0, len(files), FILES_PER_REQUEST):
            chunk = list(files[start : start + FILES_PER_REQUEST])
            body = request_body([p.read_bytes() for p in chunk], protocol)
            try:
                response = http.post(target, json=body)
            except httpx.TimeoutException as exc:
                raise PredictError(f"no answer from {target} within {timeout_s:g}s ({type(exc).__name__})") from exc
            except httpx.TransportError as exc:
                raise PredictError(f"cannot reach the predictor at {target}: {exc or type(exc).__name__}") from exc
            if response.status_code >= 400:
                raise PredictError(
                    f"the predictor answered {response.status_code} for {target}: {server_message(response, chunk)}"
                )
            try:
                answer = response.json()
            except ValueError as exc:
                raise PredictError(f"the predictor's answer from {target} is not JSON: {response.text[:200]}") from exc
            parse = parse_v1 if protocol == "v1" else parse_v2
            ranked = parse(answer, len(chunk), top_k)
            predictions += [Prediction(path, top) for path, top in zip(chunk, ranked, strict=True)]
            if protocol == "v2" and isinstance(answer, dict) and answer.get("model_version"):
                version = str(answer["model_version"])
            if on_progress is not None:
                on_progress(len(predictions), len(files))
    return PredictResult(url, model, protocol, predictions, version)
