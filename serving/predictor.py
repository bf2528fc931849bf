"""The KServe predictor: registry model in, V1/V2 predictions out.

Only `load`, `preprocess`, `predict` and `postprocess` are overridden, so KServe's own
`__call__` times each stage into its Prometheus histograms (request_*_seconds).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import orjson
import torch
from kserve import Model
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from torch import nn

from serving.codec import CodecLimits, decode_v1, decode_v2
from tsr.config import StoreConfig, state_dir
from tsr.models import ModelConfig, load_model_dir
from tsr.preprocessing import to_model_input
from tsr.registry import materialize, parse_model_spec

log = logging.getLogger(__name__)

TOP_K = 3


def default_cache_dir() -> Path:
    return state_dir() / "cache" / "models"


@dataclass(frozen=True)
class ModelSource:
    """Where `load()` gets the model: a `--model` spec, plus the store when the spec needs one."""

    spec: str
    store: StoreConfig | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)


class PreparedBatch(TypedDict):
    """What preprocess hands to predict; a dict because kserve's `validate` probes it with `in`."""

    images: torch.Tensor
    protocol: str  # "v1" | "v2"
    request: InferRequest | None


class BatchResult(TypedDict):
    probabilities: torch.Tensor  # (N, C) float32
    protocol: str
    request: InferRequest | None


def resolve_threads(threads: int) -> int:
    """0 means every core this process may run on (the affinity mask, not the machine's count)."""
    if threads > 0:
        return threads
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class TSRPredictor(Model):
    """A GTSRB classifier behind KServe's V1 and V2 REST protocols."""

    def __init__(self, name: str, source: ModelSource, limits: CodecLimits | None = None, threads: int = 0) -> None:
        super().__init__(name)
        self.source = source
        self.limits = limits or CodecLimits()
        self.threads = resolve_threads(threads)
        self.model_uri: str | None = None
        self.model_version: str | None = None  # registry version id; None for a local directory
        self.model_dir: Path | None = None
        self._model: nn.Module | None = None
        self._config: ModelConfig | None = None
        # One forward pass at a time: concurrent passes would each claim every intra-op thread.
        self._forward_lock = threading.Lock()

    @property
    def config(self) -> ModelConfig:
        if self._config is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        return self._config

    def load(self) -> bool:
        """Resolve, download and checksum-verify the model; `ready` only turns True if all of that worked."""
        self.ready = False
        spec = parse_model_spec(self.source.spec, self.name)
        model_dir, uri = materialize(spec, self.source.store, self.source.cache_dir)
        model, config = load_model_dir(model_dir)
        torch.set_num_threads(self.threads)
        self._model, self._config = model, config
        self.model_dir, self.model_uri = model_dir, uri
        # The alias was resolved to an immutable version: report that, not "champion".
        self.model_version = uri.rstrip("/").rsplit("/", 1)[-1] if spec.needs_store else None
        size = config.preprocess.image_size
        self._forward(torch.zeros(1, 3, size, size, dtype=torch.uint8))  # warm-up: first request is not slow
        log.info("model %s loaded from %s (%s, %d threads)", self.name, uri, config.arch, self.threads)
        self.ready = True
        return self.ready

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> PreparedBatch:
        size = self.config.preprocess.image_size
        if isinstance(payload, InferRequest):
            images = await asyncio.to_thread(decode_v2, payload, size, self.limits)
            return PreparedBatch(images=images, protocol="v2", request=payload)
        if isinstance(payload, bytes | str):
            # kserve passes the body through undecoded when the content-type is not JSON (curl -d).
            try:
                payload = orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"request body is not valid JSON: {exc}") from exc
        images = await asyncio.to_thread(decode_v1, payload, size, self.limits)
        return PreparedBatch(images=images, protocol="v1", request=None)

    async def predict(
        self, payload: PreparedBatch, headers: dict[str, str] | None = None, response_headers: Any = None
    ) -> BatchResult:
        probabilities = await asyncio.to_thread(self._forward, payload["images"])
        return BatchResult(probabilities=probabilities, protocol=payload["protocol"], request=payload["request"])

    async def postprocess(
        self, result: Any, headers: dict[str, str] | None = None, response_headers: Any = None
    ) -> dict[str, Any] | InferResponse:
        probs: torch.Tensor = result["probabilities"]
        if result["protocol"] == "v2":
            return self._v2_response(probs, result["request"])
        return {"predictions": self.describe(probs)}

    # ---- helpers -------------------------------------------------------------------------------

    def get_input_types(self) -> list[dict[str, Any]]:
        """V2 metadata lists the image input; UINT8 [N,H,W,3] and FP32 [N,3,H,W] tensors work too (README)."""
        return [{"name": "image", "datatype": "BYTES", "shape": [-1]}]

    def get_output_types(self) -> list[dict[str, Any]]:
        k = min(TOP_K, self.config.num_classes)
        return [
            {"name": "class_id", "datatype": "INT64", "shape": [-1]},
            {"name": "probability", "datatype": "FP32", "shape": [-1]},
            {"name": "class_name", "datatype": "BYTES", "shape": [-1]},
            {"name": "top_k_class_id", "datatype": "INT64", "shape": [-1, k]},
            {"name": "top_k_probability", "datatype": "FP32", "shape": [-1, k]},
        ]

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> softmax probabilities, via the one shared preprocessing path."""
        if self._model is None or self._config is None:
            raise RuntimeError(f"model {self.name!r} is not loaded")
        with self._forward_lock, torch.inference_mode():
            logits = self._model(to_model_input(images, self._config.preprocess))
            return torch.softmax(logits.float(), dim=1)

    def describe(self, probs: torch.Tensor) -> list[dict[str, Any]]:
        names = self.config.class_names
        k = min(TOP_K, probs.shape[1])
        top_p, top_i = probs.topk(k, dim=1)
        out = []
        for row_p, row_i in zip(top_p.tolist(), top_i.tolist(), strict=True):
            top = [{"class_id": i, "class_name": names[i], "probability": p} for p, i in zip(row_p, row_i, strict=True)]
            out.append({**top[0], "top_k": top})
        return out

    def _v2_response(self, probs: torch.Tensor, request: InferRequest | None) -> InferResponse:
        names = self.config.class_names
        n = probs.shape[0]
        k = min(TOP_K, probs.shape[1])
        top_p, top_i = probs.topk(k, dim=1)
        class_ids = top_i[:, 0].to(torch.int64).numpy()
        outputs = [
            InferOutput("class_id", [n], "INT64", class_ids),
            InferOutput("probability", [n], "FP32", top_p[:, 0].to(torch.float32).numpy()),
            InferOutput("class_name", [n], "BYTES", np.array([names[i] for i in class_ids], dtype=np.object_)),
            InferOutput("top_k_class_id", [n, k], "INT64", top_i.to(torch.int64).numpy()),
            InferOutput("top_k_probability", [n, k], "FP32", top_p.to(torch.float32).numpy()),
        ]
        return InferResponse(
            response_id=(request.id if request is not None and request.id else str(uuid.uuid4())),
            model_name=self.name,
            model_version=self.model_version,
            infer_outputs=outputs,
            use_binary_outputs=bool(request is not None and request.use_binary_outputs),
            requested_outputs=request.request_outputs if request is not None else None,
        )
