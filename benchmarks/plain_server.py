"""The baseline for row 2 of `make bench`: a minimal FastAPI + uvicorn app serving the same model.

`python -m benchmarks.plain_server --model DIR --port P [--threads N]`. Same model directory
(`tsr.core.models.load_model_dir`), same decoding (`tsr.core.preprocessing.decode_image` / `image_to_uint8`) and
the same `to_model_input` path and calibrated `probabilities`, the same V1 request and response shape as the
KServe predictor (`{"instances": [{"b64": ...}]}` -> `{"predictions": [{class_id, class_name, probability, top_k}]}`),
and nothing else: no batching, limits, metrics, drift or reload. What the predictor costs over this is
the price of those features.
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import Body, FastAPI, HTTPException

from tsr.core.models import load_model_dir, probabilities
from tsr.core.preprocessing import ImageDecodeError, decode_image, image_to_uint8, to_model_input

TOP_K = 3


def describe(probs: torch.Tensor, names: list[str]) -> list[dict[str, Any]]:
    """The predictor's V1 prediction format (top class plus top-k), so answers compare one to one."""
    k = min(TOP_K, probs.shape[1])
    top_p, top_i = probs.topk(k, dim=1)
    out = []
    for row_p, row_i in zip(top_p.tolist(), top_i.tolist(), strict=True):
        top = [{"class_id": i, "class_name": names[i], "probability": p} for p, i in zip(row_p, row_i, strict=True)]
        out.append({**top[0], "top_k": top})
    return out


def create_app(model_dir: Path, model_name: str = "gtsrb-classifier") -> FastAPI:
    model, config = load_model_dir(model_dir)
    size = config.preprocess.image_size
    app = FastAPI()

    @app.get(f"/v2/models/{model_name}/ready")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    # A plain `def`: FastAPI runs it in its thread pool, off the event loop (the usual minimal app).
    @app.post(f"/v1/models/{model_name}:predict")
    def predict(body: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008
        try:
            images = torch.stack(
                [
                    image_to_uint8(decode_image(base64.b64decode(inst["b64"]), source=f"instances[{i}]"), size)
                    for i, inst in enumerate(body["instances"])
                ]
            )
        except (KeyError, TypeError, ValueError, ImageDecodeError) as exc:
            raise HTTPException(400, str(exc)) from exc
        with torch.inference_mode():
            probs = probabilities(model(to_model_input(images, config.preprocess)), config)
        return {"predictions": describe(probs, config.class_names)}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="a model directory (tsr.core.models format)")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--model-name", default="gtsrb-classifier")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    uvicorn.run(create_app(args.model, args.model_name), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
