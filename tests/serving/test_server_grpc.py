"""gRPC (Open Inference Protocol) against the real server: answers, INVALID_ARGUMENT, NOT_FOUND, still serving."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from kserve import InferenceGRPCClient, InferInput, InferRequest

from tests.conftest import make_model_dir
from tests.serving.predictor_process import running_predictor
from tsr.core.preprocessing import load_image_file
from tsr.core.processes import free_port

NAME = "gtsrb-classifier"


@pytest.fixture(scope="module")
def grpc_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("grpc")
    grpc_port = free_port()
    args = ["--model", str(make_model_dir(root / "model")), "--http-port", str(free_port())]
    args += ["--grpc-port", str(grpc_port), "--threads", "1"]
    with running_predictor(args, root / "server.log", env={"TSR_STATE_DIR": str(root / "state")}):
        yield f"127.0.0.1:{grpc_port}"


def _uint8(pixels: np.ndarray) -> InferInput:
    inp = InferInput(name="image", shape=list(pixels.shape), datatype="UINT8")
    inp.set_data_from_numpy(pixels)
    return inp


def test_grpc_infer_and_client_mistakes(grpc_target: str, gtsrb_root: Path) -> None:
    training = gtsrb_root / "gtsrb" / "GTSRB" / "Training"
    paths = [sorted((training / f"{c:05d}").glob("*.ppm"))[0] for c in (3, 14)]
    pixels = np.stack([load_image_file(p, 32).permute(1, 2, 0).numpy() for p in paths])
    raw = InferInput(name="image", shape=[len(paths)], datatype="BYTES")
    raw.set_data_from_numpy(np.array([p.read_bytes() for p in paths], dtype=np.object_))

    async def scenario() -> None:
        client = InferenceGRPCClient(grpc_target)
        try:
            assert await client.is_model_ready(NAME)
            by_tensor = await client.infer(InferRequest(model_name=NAME, infer_inputs=[_uint8(pixels)]))
            by_bytes = await client.infer(InferRequest(model_name=NAME, infer_inputs=[raw]))
            out_tensor = {o.name: o.as_numpy() for o in by_tensor.outputs}
            out_bytes = {o.name: o.as_numpy() for o in by_bytes.outputs}
            assert out_tensor["class_id"].shape == (2,) and out_tensor["top_k_probability"].shape == (2, 3)
            assert out_tensor["class_id"].tolist() == out_bytes["class_id"].tolist()  # raw PPM bytes == pixels

            bad = _uint8(np.zeros((1, 32, 32, 4), dtype=np.uint8))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.infer(InferRequest(model_name=NAME, infer_inputs=[bad]))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "[N, H, W, 3]" in (err.value.details() or "")

            garbage = InferInput(name="image", shape=[1], datatype="BYTES")
            garbage.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.infer(InferRequest(model_name=NAME, infer_inputs=[garbage]))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.infer(InferRequest(model_name="no-such-model", infer_inputs=[_uint8(pixels)]))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND

            again = await client.infer(InferRequest(model_name=NAME, infer_inputs=[_uint8(pixels)]))
            assert {o.name: o.as_numpy() for o in again.outputs}["class_id"].tolist() == out_tensor["class_id"].tolist()
        finally:
            await client.close()

    asyncio.run(scenario())
