"""Hot reload over HTTP: a new champion in MinIO is picked up while clients keep getting answers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np

from tests.conftest import make_model_dir
from tests.serving.predictor_process import running_predictor
from tsr.core.config import StoreConfig
from tsr.core.processes import free_port
from tsr.core.registry import Registry

NAME = "signs-hot"


def _publish(store: StoreConfig, model_dir: Path) -> str:
    registry = Registry.from_config(store)
    version = registry.publish(NAME, model_dir, card={})
    registry.set_alias(NAME, version)
    return version


def test_champion_change_is_served_without_dropping_requests(minio: StoreConfig, tmp_path: Path) -> None:
    first = _publish(minio, make_model_dir(tmp_path / "a", seed=1))
    env = {
        "TSR_S3_ENDPOINT": minio.endpoint,
        "TSR_S3_ACCESS_KEY": minio.access_key,
        "TSR_S3_SECRET_KEY": minio.secret_key,
        "TSR_S3_SECURE": "0",
        "TSR_STATE_DIR": str(tmp_path / "state"),
    }
    args = ["--model", "champion", "--model-name", NAME, "--http-port", str(free_port()), "--threads", "1"]
    args += ["--reload-interval", "0.5"]
    pixels = np.zeros((1, 32, 32, 3), dtype=np.uint8).reshape(-1).tolist()
    body = {"inputs": [{"name": "image", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": pixels}]}
    with running_predictor(args, tmp_path / "server.log", env=env, name=NAME) as url:
        infer = f"{url}/v2/models/{NAME}/infer"
        assert httpx.post(infer, json=body, timeout=30).json()["model_version"] == first

        seen: list[list[str]] = [[] for _ in range(4)]  # per client, in the order that client got answers
        failures: list[str] = []
        stop = threading.Event()

        def keep_asking(versions: list[str]) -> None:
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    resp = client.post(infer, json=body)
                    if resp.status_code != 200:
                        failures.append(f"{resp.status_code} {resp.text}")
                    else:
                        versions.append(resp.json()["model_version"])

        clients = [threading.Thread(target=keep_asking, args=(versions,)) for versions in seen]
        for t in clients:
            t.start()
        try:
            second = _publish(minio, make_model_dir(tmp_path / "b", seed=2))
            deadline = time.monotonic() + 60
            while not all(v and v[-1] == second for v in seen) and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)  # some requests on the new model too
        finally:
            stop.set()
            for t in clients:
                t.join(timeout=30)
        assert not failures, failures[:3]
        for versions in seen:
            assert versions[0] == first and versions[-1] == second
            switch = versions.index(second)
            assert set(versions[switch:]) == {second}  # no flapping back once the new champion serves
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert f'tsr_model_reloads_total{{model="{NAME}",result="success"}} 1.0' in metrics
        assert f'version="{second}"' in metrics
