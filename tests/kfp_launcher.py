"""A stand-in for KFP's launcher, run inside a step's pod: artifacts in from MinIO, the step, artifacts out.

On a KFP cluster each step's container runs `/kfp-launcher/launch ... -- <the IR's command and args>`: the
launcher (a Go binary the backend copies into the pod) fetches the input artifacts to the local paths the
executor expects (`minio://bucket/key` -> `/minio/bucket/key`, the kfp SDK's convention), replaces `{{$}}` in the
arguments by the executor input, runs the command, then uploads every output artifact and the executor output.
KFP's launcher image (gcr.io) and its metadata server cannot be had here, so tests/kfp_pods.py mounts this file
from a ConfigMap at /kfp-launcher and runs it the same way:

    python3 /kfp-launcher/launch.py --executor_input '<json>' --output_uri minio://b/run/task/executor_output.json \
        -- python3 -m kfp.dsl.executor_main --executor_input '{{$}}' --function_to_execute ingest_component

It uses only what the component image has (Python and the `minio` client, a dependency of the platform). The
artifact store's endpoint and credentials come from the environment KFP gives its own launcher
(`KFP_ARTIFACT_ENDPOINT`, `KFP_ARTIFACT_ACCESS_KEY`, `KFP_ARTIFACT_SECRET_KEY`: the driver stand-in fills them from
the `mlpipeline-minio-artifact` Secret, the name KFP's manifests use), never from the step's own Secret.
Exit status: the step's own, or 2 for a launcher error (one line naming the artifact).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from minio import Minio
from minio.error import S3Error

PREFIX = "minio://"
LOCAL_ROOT = "/minio/"  # kfp.dsl.types.artifact_types: minio://b/k is read and written at /minio/b/k
PLACEHOLDER = "{{$}}"


def split_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith(PREFIX):
        raise ValueError(f"{uri}: only minio:// artifact URIs are handled by this launcher")
    bucket, _, key = uri[len(PREFIX) :].partition("/")
    return bucket, key


def local_path(uri: str) -> Path:
    return Path(LOCAL_ROOT + uri[len(PREFIX) :])


def artifacts(section: dict[str, object]) -> list[dict[str, object]]:
    """Every runtime artifact of an executor input's `inputs` or `outputs` section."""
    found: list[dict[str, object]] = []
    for entry in dict(section.get("artifacts") or {}).values():  # type: ignore[call-overload]
        found.extend(entry["artifacts"])
    return found


def download(client: Minio, uri: str) -> int:
    """The object (a file artifact) or every object under `key/` (a directory artifact) to the local path."""
    bucket, key = split_uri(uri)
    target = local_path(uri)
    objects = [o for o in client.list_objects(bucket, prefix=key, recursive=True) if not o.is_dir]
    exact = [o for o in objects if o.object_name == key]
    if exact:
        target.parent.mkdir(parents=True, exist_ok=True)
        client.fget_object(bucket, key, str(target))
        return 1
    inside = [o for o in objects if o.object_name.startswith(key + "/")]
    if not inside:
        raise FileNotFoundError(f"input artifact {uri}: no such object or prefix")
    for obj in inside:
        path = target / obj.object_name[len(key) + 1 :]
        path.parent.mkdir(parents=True, exist_ok=True)
        client.fget_object(bucket, obj.object_name, str(path))
    return len(inside)


def upload(client: Minio, uri: str) -> int:
    """The local file, or every file under the local directory, to the artifact's URI.

    A step may write no file for an output: KFP's launcher logs "Local filepath ... does not exist" and goes on
    (a ClassificationMetrics artifact such as the evaluate step's `confusion` lives in the executor output's
    metadata only), so this does the same and uploads nothing (0 objects).
    """
    bucket, key = split_uri(uri)
    source = local_path(uri)
    if source.is_file():
        client.fput_object(bucket, key, str(source))
        return 1
    if not source.is_dir():
        print(f"launcher: output artifact {uri}: local path {source} does not exist (KFP allows it)", flush=True)
        return 0
    count = 0
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        client.fput_object(bucket, f"{key}/{path.relative_to(source).as_posix()}", str(path))
        count += 1
    return count


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("launcher: usage: launch.py --executor_input JSON --output_uri URI -- COMMAND...", file=sys.stderr)
        return 2
    options, command = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    executor_input = json.loads(options[options.index("--executor_input") + 1])
    output_uri = options[options.index("--output_uri") + 1]
    client = Minio(
        os.environ["KFP_ARTIFACT_ENDPOINT"],
        access_key=os.environ["KFP_ARTIFACT_ACCESS_KEY"],
        secret_key=os.environ["KFP_ARTIFACT_SECRET_KEY"],
        secure=False,
    )
    try:
        for artifact in artifacts(executor_input["inputs"]):
            n = download(client, str(artifact["uri"]))
            print(f"launcher: input {artifact['uri']} ({n} objects)", flush=True)
        for artifact in artifacts(executor_input["outputs"]):
            local_path(str(artifact["uri"])).parent.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError, S3Error) as exc:
        print(f"launcher: {exc}", file=sys.stderr)
        return 2
    argv_step = [json.dumps(executor_input) if arg == PLACEHOLDER else arg for arg in command]
    print(f"launcher: running {' '.join(command)}", flush=True)
    status = subprocess.call(argv_step)
    if status != 0:
        print(f"launcher: the step exited with {status}; no output uploaded", file=sys.stderr)
        return status
    try:
        for artifact in artifacts(executor_input["outputs"]):
            n = upload(client, str(artifact["uri"]))
            print(f"launcher: output {artifact['uri']} ({n} objects)", flush=True)
        output_file = Path(executor_input["outputs"]["outputFile"])
        body = output_file.read_bytes() if output_file.is_file() else b"{}"
        bucket, key = split_uri(output_uri)
        local = Path("/tmp/launcher-executor-output.json")
        local.write_bytes(body)
        client.fput_object(bucket, key, str(local), content_type="application/json")
    except (OSError, ValueError, S3Error) as exc:
        print(f"launcher: {exc}", file=sys.stderr)
        return 2
    print(f"launcher: executor output {output_uri}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
