"""Steps of a compiled pipeline run as pods, the way a KFP backend's driver would start them, for the node tier.

What is real: the compiled IR (pipelines/compiled/tsr_training.yaml's format, compiled here for the locally
built image), the component image, the API server, the kubelet and containerd that run the pod, MinIO. What
stands in for KFP's backend (whose Go modules the proxy refuses, and whose launcher image is on gcr.io):

- the driver: this module. For one task of the IR it resolves the component and its executor, fills the
  parameters (the caller's values over the IR's defaults, cast to the IR's types), names each output artifact
  `minio://<bucket>/v2/artifacts/<pipeline>/<run>/<task>/<name>` (KFP's layout) and passes upstream artifacts
  (with their metadata) as inputs; it builds the pod from the executor's container (image, command, args and
  resources and env exactly as the IR gives them) and the IR's Kubernetes platform spec (`secretAsEnv`,
  `secretAsVolume`, `configMapAsVolume`: the model-signing keys of register and evaluate, `nodeSelector`);
- the launcher: tests/kfp_launcher.py, mounted from a ConfigMap at /kfp-launcher and put in front of the
  IR's command as KFP puts its own launcher there (`... -- python3 -m kfp.dsl.executor_main ...`).

The pod runs as PodSecurity `restricted` admits it: non-root (the image's uid 10001), read-only root
filesystem, emptyDirs for /minio (artifacts), /tmp (the executor output) and the home directory.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s
from minio import Minio

from tsr.core.config import StoreConfig

LAUNCHER_SOURCE = Path(__file__).resolve().parent / "kfp_launcher.py"
LAUNCHER_CONFIGMAP = "kfp-launcher-standin"
ARTIFACT_SECRET = "mlpipeline-minio-artifact"  # the name KFP's own manifests give the artifact store's Secret
OUTPUT_FILE = "/tmp/kfp_outputs/output_metadata.json"  # where KFP's launcher asks the executor to write
HOME = "/home/tsr"  # the component image's HOME (components/Dockerfile)
CASTS = {"NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "BOOLEAN": bool, "STRING": str}


@dataclass(frozen=True)
class Pipeline:
    """The two documents of a compiled pipeline: the pipeline spec and the platform (Kubernetes) spec."""

    spec: dict[str, Any]
    platform: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> Pipeline:
        docs = list(yaml.safe_load_all(path.read_text()))
        return cls(docs[0], docs[1]["platforms"]["kubernetes"] if len(docs) > 1 else {})

    def component(self, task: str) -> dict[str, Any]:
        ref = self.spec["root"]["dag"]["tasks"][task]["componentRef"]["name"]
        component: dict[str, Any] = self.spec["components"][ref]
        return component

    def executor(self, task: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
        """The executor's label, its container and its platform spec."""
        label = self.component(task)["executorLabel"]
        container = self.spec["deploymentSpec"]["executors"][label]["container"]
        platform = self.platform.get("deploymentSpec", {}).get("executors", {}).get(label, {})
        return label, container, platform


@dataclass
class StepResult:
    task: str
    pod: str
    seconds: float
    phase: str
    outputs: dict[str, dict[str, Any]]  # output artifact name -> runtime artifact (uri, metadata), from the executor
    log: str


def artifact_store(store: StoreConfig) -> Minio:
    return Minio(store.endpoint, access_key=store.access_key, secret_key=store.secret_key, secure=store.secure)


def install(core: k8s.CoreV1Api, namespace: str, endpoint: str, store: StoreConfig, bucket: str) -> None:
    """What a KFP installation provides: the artifact bucket, the launcher (here its stand-in's ConfigMap) and the
    artifact store's Secret (`endpoint` as pods reach the store)."""
    client = artifact_store(store)
    if not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    core.create_namespaced_config_map(
        namespace,
        k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(name=LAUNCHER_CONFIGMAP), data={"launch.py": LAUNCHER_SOURCE.read_text()}
        ),
    )
    core.create_namespaced_secret(
        namespace,
        k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name=ARTIFACT_SECRET),
            string_data={"endpoint": endpoint, "accesskey": store.access_key, "secretkey": store.secret_key},
        ),
    )


def parameters(component: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """The IR's defaults overlaid with `values`, each cast to the IR's parameter type; unknown or missing ones fail."""
    definitions = component.get("inputDefinitions", {}).get("parameters", {})
    unknown = set(values) - set(definitions)
    if unknown:
        raise ValueError(f"not parameters of the component: {sorted(unknown)}")
    resolved = {}
    for name, d in definitions.items():
        if name in values:
            resolved[name] = CASTS[d["parameterType"]](values[name])
        elif "defaultValue" in d:
            resolved[name] = CASTS[d["parameterType"]](d["defaultValue"])
        elif not d.get("isOptional"):
            raise ValueError(f"parameter {name!r} has no value and no default in the IR")
    return resolved


def executor_input(
    pipeline: Pipeline,
    task: str,
    values: dict[str, Any],
    inputs: dict[str, dict[str, Any]],
    bucket: str,
    run: str,
) -> dict[str, Any]:
    """What KFP's driver hands the launcher: parameter values, input artifacts, output artifacts, outputFile."""
    component = pipeline.component(task)
    name = pipeline.spec["pipelineInfo"]["name"]
    out_defs = component.get("outputDefinitions", {}).get("artifacts", {})
    in_defs = component.get("inputDefinitions", {}).get("artifacts", {})
    if set(inputs) != set(in_defs):
        raise ValueError(f"{task}: input artifacts {sorted(inputs)}, the IR has {sorted(in_defs)}")

    def runtime(art: str, d: dict[str, Any], uri: str, metadata: dict[str, Any]) -> dict[str, Any]:
        return {"artifacts": [{"name": art, "type": d["artifactType"], "uri": uri, "metadata": metadata}]}

    return {
        "inputs": {
            "parameterValues": parameters(component, values),
            "artifacts": {
                art: runtime(art, in_defs[art], inputs[art]["uri"], inputs[art].get("metadata", {})) for art in inputs
            },
        },
        "outputs": {
            "artifacts": {
                art: runtime(art, d, f"minio://{bucket}/v2/artifacts/{name}/{run}/{task}/{art}", {})
                for art, d in out_defs.items()
            },
            "outputFile": OUTPUT_FILE,
        },
    }


def step_pod(pipeline: Pipeline, task: str, pod_name: str, spec: dict[str, Any], output_uri: str) -> k8s.V1Pod:
    """The pod KFP would run for `task`, with the launcher stand-in in front of the IR's command."""
    _, container, platform = pipeline.executor(task)
    env: list[k8s.V1EnvVar] = []
    for env_name, key in (("ENDPOINT", "endpoint"), ("ACCESS_KEY", "accesskey"), ("SECRET_KEY", "secretkey")):
        env.append(
            k8s.V1EnvVar(
                name=f"KFP_ARTIFACT_{env_name}",
                value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name=ARTIFACT_SECRET, key=key)),
            )
        )
    for secret in platform.get("secretAsEnv", []):  # kfp-kubernetes' use_secret_as_env, as the IR says
        for pair in secret["keyToEnv"]:
            env.append(
                k8s.V1EnvVar(
                    name=pair["envVar"],
                    value_from=k8s.V1EnvVarSource(
                        secret_key_ref=k8s.V1SecretKeySelector(
                            name=secret["secretName"], key=pair["secretKey"], optional=secret.get("optional", False)
                        )
                    ),
                )
            )
    env += [k8s.V1EnvVar(name=e["name"], value=e["value"]) for e in container.get("env", [])]  # e.g. TSR_SIGNING_KEY
    # kfp-kubernetes' use_secret_as_volume / use_config_map_as_volume (the signing keys), read-only as KFP mounts them
    mounted: list[tuple[k8s.V1Volume, str]] = [
        (
            k8s.V1Volume(
                name=f"secret-{i}",
                secret=k8s.V1SecretVolumeSource(secret_name=v["secretName"], optional=v.get("optional", False)),
            ),
            v["mountPath"],
        )
        for i, v in enumerate(platform.get("secretAsVolume", []))
    ] + [
        (
            k8s.V1Volume(
                name=f"config-map-{i}",
                config_map=k8s.V1ConfigMapVolumeSource(name=v["configMapName"], optional=v.get("optional", False)),
            ),
            v["mountPath"],
        )
        for i, v in enumerate(platform.get("configMapAsVolume", []))
    ]
    res = container.get("resources", {})
    resources = k8s.V1ResourceRequirements(
        requests={
            k: v for k, v in (("cpu", res.get("resourceCpuRequest")), ("memory", res.get("resourceMemoryRequest"))) if v
        },
        limits={
            k: v for k, v in (("cpu", res.get("resourceCpuLimit")), ("memory", res.get("resourceMemoryLimit"))) if v
        },
    )
    command = [
        "python3",
        "/kfp-launcher/launch.py",
        "--executor_input",
        json.dumps(spec),
        "--output_uri",
        output_uri,
        "--",
        *container["command"],
        *container["args"],
    ]
    writable = {"artifacts": "/minio", "tmp": "/tmp", "home": HOME}
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=pod_name, labels={"pipelines.kubeflow.org/task": task}),
        spec=k8s.V1PodSpec(
            restart_policy="Never",
            node_selector=platform.get("nodeSelector", {}).get("labels") or None,
            security_context=k8s.V1PodSecurityContext(
                run_as_non_root=True, seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")
            ),
            containers=[
                k8s.V1Container(
                    name="main",  # KFP's name for the step's container
                    image=container["image"],
                    image_pull_policy="Never",
                    command=command,
                    env=env,
                    resources=resources,
                    security_context=k8s.V1SecurityContext(
                        allow_privilege_escalation=False,
                        read_only_root_filesystem=True,
                        capabilities=k8s.V1Capabilities(drop=["ALL"]),
                    ),
                    volume_mounts=[
                        *(k8s.V1VolumeMount(name=n, mount_path=p) for n, p in writable.items()),
                        k8s.V1VolumeMount(name="launcher", mount_path="/kfp-launcher", read_only=True),
                        *(k8s.V1VolumeMount(name=v.name, mount_path=path, read_only=True) for v, path in mounted),
                    ],
                )
            ],
            volumes=[
                *(k8s.V1Volume(name=n, empty_dir=k8s.V1EmptyDirVolumeSource()) for n in writable),
                k8s.V1Volume(name="launcher", config_map=k8s.V1ConfigMapVolumeSource(name=LAUNCHER_CONFIGMAP)),
                *(v for v, _ in mounted),
            ],
        ),
    )


def run_step(
    core: k8s.CoreV1Api,
    namespace: str,
    pipeline: Pipeline,
    task: str,
    values: dict[str, Any],
    inputs: dict[str, dict[str, Any]],
    store: StoreConfig,
    bucket: str,
    run: str,
    log_of: Any,
    timeout_s: float = 900.0,
) -> StepResult:
    """Start the task's pod, wait for it to end, and read the executor output the launcher uploaded."""
    spec = executor_input(pipeline, task, values, inputs, bucket, run)
    name = pipeline.spec["pipelineInfo"]["name"]
    output_key = f"v2/artifacts/{name}/{run}/{task}/executor_output.json"
    pod_name = f"{run}-{task}-{uuid.uuid4().hex[:5]}"
    started = time.monotonic()
    core.create_namespaced_pod(namespace, step_pod(pipeline, task, pod_name, spec, f"minio://{bucket}/{output_key}"))
    phase = "Pending"
    while time.monotonic() - started < timeout_s:
        phase = core.read_namespaced_pod(pod_name, namespace).status.phase
        if phase in ("Succeeded", "Failed"):
            break
        time.sleep(2)
    seconds = time.monotonic() - started
    log = log_of(namespace, pod_name, "main")
    outputs: dict[str, dict[str, Any]] = {}
    if phase == "Succeeded":
        executed = json.loads(read_object(store, f"minio://{bucket}/{output_key}"))
        declared = spec["outputs"]["artifacts"]
        for art, entry in declared.items():
            produced = executed.get("artifacts", {}).get(art, {}).get("artifacts", [{}])[0]
            outputs[art] = {"uri": entry["artifacts"][0]["uri"], "metadata": produced.get("metadata", {})}
    return StepResult(task, pod_name, seconds, phase, outputs, log)


def read_object(store: StoreConfig, uri: str) -> bytes:
    bucket, _, key = uri.removeprefix("minio://").partition("/")
    body = artifact_store(store).get_object(bucket, key)
    try:
        return bytes(body.read())
    finally:
        body.close()
        body.release_conn()


def list_keys(store: StoreConfig, uri: str) -> list[str]:
    bucket, _, key = uri.removeprefix("minio://").partition("/")
    return sorted(
        o.object_name[len(key) + 1 :] for o in artifact_store(store).list_objects(bucket, key + "/", recursive=True)
    )


def download_dir(store: StoreConfig, uri: str, target: Path) -> Path:
    """A directory artifact from the store to `target` (to load a model or dataset the pod wrote)."""
    client = artifact_store(store)  # one client (and its connections) for every object
    bucket, _, key = uri.removeprefix("minio://").partition("/")
    for rel in list_keys(store, uri):
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        client.fget_object(bucket, f"{key}/{rel}", str(path))
    return target
