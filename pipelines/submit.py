"""Send the compiled pipeline to a Kubeflow Pipelines backend: one run now (`submit`) or a schedule (`schedule`).

Both go through kfp.Client (the KFP v2beta1 REST API): the package becomes a version of the pipeline
"tsr-training" (created if missing; a package already uploaded under the same content hash is reused, not
duplicated), the experiment is created if missing, then the run or recurring run starts from that version.

Parameters are checked against the package's declared inputs (`root.inputDefinitions.parameters`) before any
request, so a typo or a wrong type fails here rather than minutes into a run on the cluster. The API token is
read by the caller (the CLI takes it from an environment variable), kept out of `repr`, and never logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import re
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.compile import COMPILED
from pipelines.training_pipeline import PIPELINE_NAME

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "tsr"
DEFAULT_NAMESPACE = "kubeflow"
# KFP rejects a recurring run whose max_concurrency is outside this range.
MAX_CONCURRENCY_RANGE = (1, 10)
_EQUALS = 1  # filter.proto Predicate.Operation.EQUALS (what kfp.Client itself sends)


class SubmitError(Exception):
    """The submission was refused before or by the KFP backend; the message says why, without credentials."""


class ParameterError(SubmitError, ValueError):
    """A run parameter is unknown, missing or of the wrong type (raised before any network call)."""


@dataclass(frozen=True)
class KfpTarget:
    """Which KFP backend to talk to, and as whom.

    - `host`: the API endpoint, e.g. https://kubeflow.example/pipeline or http://localhost:8888 (a port-forward of
      svc/ml-pipeline). Empty: the in-cluster service `ml-pipeline.<namespace>` when running in a pod, else the
      API server proxy of the current kubeconfig context (`kube_context`).
    - `namespace`: the profile namespace of a multi-user deployment (experiments and runs live there); a
      single-user deployment ignores it.
    - credentials, first that applies: `existing_token` (sent as `Authorization: Bearer`), then
      `service_account_token` (the projected KFP token a pod gets at /var/run/secrets/kubeflow/pipelines/token),
      else none for an explicit host (port-forward) or the in-cluster/kubeconfig credentials for an empty one.
    - `ui_url`: base of the dashboard links (defaults to `host`).
    - `private_pipeline`: keep the pipeline in `namespace` (multi-user KFP, where a profile user may not be
      allowed to create shared pipelines); default: a shared pipeline, visible to every namespace.
    """

    host: str = ""
    namespace: str = DEFAULT_NAMESPACE
    existing_token: str | None = field(default=None, repr=False)
    service_account_token: bool = False
    kube_context: str | None = None
    verify_ssl: bool = True
    ssl_ca_cert: str | None = None
    ui_url: str = ""
    private_pipeline: bool = False

    @property
    def where(self) -> str:
        """The host for messages, without any user:password@ part."""
        return re.sub(r"//[^/@]*@", "//", self.host) if self.host else "the in-cluster KFP"

    @property
    def ui_base(self) -> str:
        """Where dashboard links point; an in-cluster client without a host gets KFP's relative UI path."""
        base = re.sub(r"//[^/@]*@", "//", self.ui_url or self.host).rstrip("/")
        if not base:
            return "/pipeline"
        return base if base.startswith(("http://", "https://")) else f"https://{base}"

    def client(self) -> Any:
        """A kfp.Client for this target; its console chatter goes to the debug log."""
        from kfp import client as kfp_client

        credentials = None
        if not self.existing_token and self.service_account_token:
            credentials = kfp_client.ServiceAccountTokenVolumeCredentials(path=None)
        with warnings.catch_warnings(), _quiet():
            # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later": known, and not actionable.
            warnings.simplefilter("ignore", FutureWarning)
            return kfp_client.Client(
                host=self.host or None,
                namespace=self.namespace,
                existing_token=self.existing_token or None,
                credentials=credentials,
                kube_context=self.kube_context,
                ui_host=self.ui_base if (self.ui_url or self.host) else None,
                verify_ssl=self.verify_ssl,
                ssl_ca_cert=self.ssl_ca_cert,
            )


@dataclass(frozen=True)
class ParameterSpec:
    """One declared pipeline input, as the compiled IR states it."""

    name: str
    type: str  # STRING, NUMBER_INTEGER, NUMBER_DOUBLE, BOOLEAN, LIST, STRUCT
    default: Any = None
    optional: bool = False

    @property
    def required(self) -> bool:
        return not self.optional and self.default is None


@dataclass(frozen=True)
class PipelinePackage:
    """A compiled pipeline file: its bytes, name and declared parameters."""

    path: Path
    name: str
    parameters: Mapping[str, ParameterSpec]
    sha256: str

    @classmethod
    def load(cls, path: Path) -> PipelinePackage:
        if path.suffix not in (".yaml", ".yml"):
            raise SubmitError(f"{path}: expected the compiled pipeline YAML (make compile)")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SubmitError(f"cannot read pipeline package {path}: {exc.strerror}") from exc
        docs = [d for d in yaml.safe_load_all(data) if d]
        if not docs or "root" not in docs[0]:
            raise SubmitError(f"{path}: not a KFP pipeline spec (no `root`)")
        spec = docs[0]
        declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
        parameters = {
            name: ParameterSpec(name, d["parameterType"], d.get("defaultValue"), bool(d.get("isOptional", False)))
            for name, d in declared.items()
        }
        name = spec.get("pipelineInfo", {}).get("name", PIPELINE_NAME)
        return cls(path, name, parameters, hashlib.sha256(data).hexdigest())

    def default_version_name(self, pipeline_name: str) -> str:
        """Content-addressed, so re-submitting the same package reuses its version instead of duplicating it."""
        return f"{pipeline_name}-{self.sha256[:12]}"


@dataclass(frozen=True)
class Submission:
    """What was started: the run or recurring run, its dashboard link, and what it runs."""

    id: str
    url: str
    pipeline_id: str
    pipeline_version_id: str
    experiment_id: str


# ---- parameters ------------------------------------------------------------------------------------------------
_TYPE_NAMES = {
    "STRING": "a string",
    "NUMBER_INTEGER": "an integer",
    "NUMBER_DOUBLE": "a number",
    "BOOLEAN": "a boolean",
    "LIST": "a list",
    "STRUCT": "a mapping",
}


def _check_value(spec: ParameterSpec, value: Any) -> Any:
    """The value as KFP expects it, or ParameterError naming the parameter and the declared type."""
    ok = {
        "STRING": isinstance(value, str),
        "NUMBER_INTEGER": isinstance(value, int) and not isinstance(value, bool),
        "NUMBER_DOUBLE": isinstance(value, int | float) and not isinstance(value, bool),
        "BOOLEAN": isinstance(value, bool),
        "LIST": isinstance(value, list | tuple),
        "STRUCT": isinstance(value, dict),
    }.get(spec.type)
    if ok is None:
        raise ParameterError(f"parameter {spec.name!r} has a type this client does not know: {spec.type}")
    if not ok:
        expected = _TYPE_NAMES[spec.type]
        raise ParameterError(
            f"parameter {spec.name!r} must be {expected} ({spec.type}), got {type(value).__name__} {value!r}"
        )
    if spec.type == "NUMBER_DOUBLE":
        return float(value)
    if spec.type == "LIST":
        return list(value)
    return value


def validate_parameters(params: Mapping[str, Any], declared: Mapping[str, ParameterSpec]) -> dict[str, Any]:
    """Check names, types and required inputs; returns the parameters to send."""
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ParameterError(
            f"unknown pipeline parameter(s) {', '.join(map(repr, unknown))}; "
            f"the pipeline declares: {', '.join(sorted(declared))}"
        )
    missing = sorted(name for name, spec in declared.items() if spec.required and name not in params)
    if missing:
        raise ParameterError(f"missing required pipeline parameter(s): {', '.join(missing)}")
    return {name: _check_value(declared[name], value) for name, value in params.items()}


def _coerce(spec: ParameterSpec, text: str) -> Any:
    try:
        if spec.type == "STRING":
            return text
        if spec.type == "NUMBER_INTEGER":
            return int(text)
        if spec.type == "NUMBER_DOUBLE":
            return float(text)
        if spec.type == "BOOLEAN":
            lowered = text.strip().lower()
            if lowered in ("true", "1", "yes"):
                return True
            if lowered in ("false", "0", "no"):
                return False
            raise ValueError(text)
        return json.loads(text)  # LIST / STRUCT
    except ValueError:
        expected = _TYPE_NAMES.get(spec.type, spec.type)
        raise ParameterError(f"parameter {spec.name!r} must be {expected} ({spec.type}), got {text!r}") from None


def parse_parameter_args(items: list[str], declared: Mapping[str, ParameterSpec]) -> dict[str, Any]:
    """`key=value` strings (the CLI's --param) to typed values, by each parameter's declared type."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ParameterError(f"--param expects key=value, got {item!r}")
        if key not in declared:
            raise ParameterError(
                f"unknown pipeline parameter {key!r}; the pipeline declares: {', '.join(sorted(declared))}"
            )
        params[key] = _coerce(declared[key], text)
    return params


def kfp_cron(expression: str) -> str:
    """KFP's scheduler wants a leading seconds field (robfig/cron v1): a standard 5-field cron gets "0 "."""
    expression = " ".join(expression.split())
    if expression.startswith("@"):  # @daily, @weekly, @every 6h: understood as they are
        return expression
    fields = expression.split(" ")
    if len(fields) not in (5, 6) or not all(re.fullmatch(r"[0-9A-Za-z*?/,\-]+", f) for f in fields):
        raise ParameterError(
            f"cron expression {expression!r}: expected 5 fields (minute hour day-of-month month day-of-week), "
            "6 with leading seconds, or a descriptor such as @daily"
        )
    return expression if len(fields) == 6 else f"0 {expression}"


# ---- the backend ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """kfp.Client prints links to stdout; keep the caller's stdout for its own output."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    for line in buffer.getvalue().splitlines():
        log.debug("kfp: %s", line)


def _api_error(action: str, exc: Exception) -> SubmitError:
    # ApiException's str() carries the response headers; status, reason and body say what went wrong.
    status = getattr(exc, "status", None)
    if status is not None:
        body = str(getattr(exc, "body", "") or "")[:500]
        return SubmitError(f"{action}: KFP API answered {status} {getattr(exc, 'reason', '')}: {body}".rstrip(": "))
    return SubmitError(f"{action}: {type(exc).__name__}: {exc}")


def _display_name_filter(name: str) -> str:
    return json.dumps({"predicates": [{"operation": _EQUALS, "key": "display_name", "stringValue": name}]})


def _pipeline_version(
    client: Any, package: PipelinePackage, pipeline_name: str, version_name: str, namespace: str | None
) -> tuple[str, str]:
    """(pipeline id, version id) of `version_name`, creating the pipeline and uploading the version as needed."""
    found_pipelines = client.list_pipelines(
        page_size=2, filter=_display_name_filter(pipeline_name), namespace=namespace
    )
    existing = found_pipelines.pipelines or []
    if len(existing) > 1:
        raise SubmitError(f"more than one pipeline is named {pipeline_name!r}; pass a unique pipeline name")
    if existing:
        pipeline_id = existing[0].pipeline_id
    else:
        from kfp_server_api import V2beta1Pipeline

        created = client.pipelines.pipeline_service_create_pipeline(
            pipeline=V2beta1Pipeline(
                display_name=pipeline_name, description="GTSRB traffic-sign classifier", namespace=namespace
            )
        )
        pipeline_id = created.pipeline_id
        log.info("created pipeline %s (%s)", pipeline_name, pipeline_id)
    found = client.list_pipeline_versions(pipeline_id, page_size=1, filter=_display_name_filter(version_name))
    if found.pipeline_versions:
        version_id = found.pipeline_versions[0].pipeline_version_id
        log.info("pipeline version %s exists (%s): reusing it", version_name, version_id)
        return pipeline_id, version_id
    version = client.upload_pipeline_version(
        str(package.path), version_name, pipeline_id=pipeline_id, description=f"sha256 {package.sha256}"
    )
    log.info("uploaded pipeline version %s (%s)", version_name, version.pipeline_version_id)
    return pipeline_id, version.pipeline_version_id


def _prepare(
    target: KfpTarget,
    package_path: Path,
    params: Mapping[str, Any],
    experiment: str,
    pipeline_name: str | None,
    version_name: str | None,
) -> tuple[Any, dict[str, Any], str, str, str]:
    """Validate locally, then connect and make sure pipeline version and experiment exist."""
    package = PipelinePackage.load(package_path)
    checked = validate_parameters(params, package.parameters)
    if not experiment.strip():
        raise ParameterError("the experiment name must not be empty")
    name = pipeline_name or package.name
    version = version_name or package.default_version_name(name)
    log.info("submitting %s to %s (namespace %s, experiment %s)", name, target.where, target.namespace, experiment)
    try:
        client = target.client()
        with _quiet():
            pipeline_namespace = target.namespace if target.private_pipeline else None
            pipeline_id, version_id = _pipeline_version(client, package, name, version, pipeline_namespace)
            experiment_id = client.create_experiment(experiment, namespace=target.namespace).experiment_id
    except SubmitError:
        raise
    except Exception as exc:
        raise _api_error(f"preparing pipeline {name!r} on {target.where}", exc) from exc
    return client, checked, pipeline_id, version_id, experiment_id


def submit(
    target: KfpTarget,
    params: Mapping[str, Any],
    package: Path = COMPILED,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    pipeline_name: str | None = None,
    version_name: str | None = None,
    service_account: str | None = None,
    enable_caching: bool | None = None,
) -> Submission:
    """Start one run of the compiled package; returns its id and dashboard URL.

    `enable_caching=None` keeps the per-step caching compiled into the package (ingest/train cached, the rest
    not); True/False overrides it for every step of this run.
    """
    client, checked, pipeline_id, version_id, experiment_id = _prepare(
        target, package, params, experiment, pipeline_name, version_name
    )
    name = run_name or f"{pipeline_name or PIPELINE_NAME}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        with _quiet():
            run = client.run_pipeline(
                experiment_id,
                name,
                params=checked,
                pipeline_id=pipeline_id,
                version_id=version_id,
                enable_caching=enable_caching,
                service_account=service_account,
            )
    except Exception as exc:
        raise _api_error(f"starting run {name!r}", exc) from exc
    url = f"{target.ui_base}/#/runs/details/{run.run_id}"
    log.info("run %s started: %s", run.run_id, url)
    return Submission(run.run_id, url, pipeline_id, version_id, experiment_id)


def schedule(
    target: KfpTarget,
    params: Mapping[str, Any],
    cron: str,
    package: Path = COMPILED,
    experiment: str = DEFAULT_EXPERIMENT,
    name: str | None = None,
    max_concurrency: int = 1,
    pipeline_name: str | None = None,
    version_name: str | None = None,
    service_account: str | None = None,
    enabled: bool = True,
) -> Submission:
    """Create a recurring run (cron; catch-up off, so a paused schedule does not fire a backlog on resume).

    `cron` is standard 5-field cron ("0 3 * * 0": Sundays 03:00) or KFP's 6-field form with leading seconds;
    KFP evaluates it in the scheduler's time zone (UTC on most clusters).
    """
    expression = kfp_cron(cron)
    low, high = MAX_CONCURRENCY_RANGE
    if not low <= max_concurrency <= high:
        raise ParameterError(f"max_concurrency must be between {low} and {high}, got {max_concurrency}")
    client, checked, pipeline_id, version_id, experiment_id = _prepare(
        target, package, params, experiment, pipeline_name, version_name
    )
    job_name = name or f"{pipeline_name or PIPELINE_NAME}-schedule"
    try:
        with _quiet():
            recurring = client.create_recurring_run(
                experiment_id,
                job_name,
                cron_expression=expression,
                max_concurrency=max_concurrency,
                no_catchup=True,
                params=checked,
                pipeline_id=pipeline_id,
                version_id=version_id,
                enabled=enabled,
                service_account=service_account,
            )
    except Exception as exc:
        raise _api_error(f"creating recurring run {job_name!r}", exc) from exc
    url = f"{target.ui_base}/#/recurringrun/details/{recurring.recurring_run_id}"
    log.info("recurring run %s created (%s): %s", recurring.recurring_run_id, expression, url)
    return Submission(recurring.recurring_run_id, url, pipeline_id, version_id, experiment_id)
