"""A small real HTTP server on loopback speaking the subset of the KFP v2beta1 REST API that kfp.Client uses.

No KFP backend can run in the test environment, so this stands in for one: it keeps pipelines, versions,
experiments, runs and recurring runs in memory, answers in the API's JSON shapes (snake_case, as the generated
kfp_server_api models expect), and records every request (method, path, query, headers, body) for assertions.
Unknown routes answer 404 like the real gateway, so a client calling something unexpected fails loudly.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API = "/apis/v2beta1"
CREATED_AT = "2026-01-01T00:00:00Z"


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def q(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def uploaded_file(self) -> tuple[str, bytes]:
        """(filename, content) of the multipart `uploadfile` field."""
        head = f"Content-Type: {self.headers['content-type']}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + self.body)
        for part in message.iter_parts():  # type: ignore[attr-defined]
            if part.get_param("name", header="content-disposition") == "uploadfile":
                payload = part.get_payload(decode=True)
                assert isinstance(payload, bytes)
                return part.get_filename() or "", payload
        raise AssertionError("no uploadfile part in the request")


@dataclass
class FakeKfp:
    """The server's state; use as a context manager, then point kfp.Client at `url`."""

    multi_user: bool = False
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)
    versions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    recurring_runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    # (method, path) -> HTTP status to answer instead, to exercise the client's error path.
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None, "use FakeKfp as a context manager"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> FakeKfp:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                parts = urlsplit(self.path)
                request = Recorded(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length) if length else b"",
                )
                with fake._lock:
                    fake.requests.append(request)
                    status, payload = fake.route(request)
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = do_PATCH = _handle

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests]

    def _id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids)}"

    # ---- routing -------------------------------------------------------------------------------------------
    def route(self, r: Recorded) -> tuple[int, Any]:
        if (r.method, r.path) in self.failures:
            return self.failures[(r.method, r.path)], {"error": "injected failure", "code": 13}
        routes: list[tuple[str, str, Callable[..., tuple[int, Any]]]] = [
            ("GET", rf"{API}/healthz", self._healthz),
            ("GET", rf"{API}/pipelines", self._list_pipelines),
            ("POST", rf"{API}/pipelines", self._create_pipeline),
            ("POST", rf"{API}/pipelines/upload", self._upload),
            ("POST", rf"{API}/pipelines/upload_version", self._upload_version),
            ("GET", rf"{API}/pipelines/(?P<pid>[^/]+)/versions", self._list_versions),
            ("GET", rf"{API}/experiments", self._list_experiments),
            ("POST", rf"{API}/experiments", self._create_experiment),
            ("POST", rf"{API}/runs", self._create_run),
            ("POST", rf"{API}/recurringruns", self._create_recurring_run),
        ]
        for method, pattern, handler in routes:
            match = re.fullmatch(pattern, r.path)
            if method == r.method and match:
                return handler(r, **match.groupdict())
        return 404, {"error": f"no route {r.method} {r.path}", "code": 5, "message": "Not Found"}

    @staticmethod
    def _matches(item: dict[str, Any], filter_json: str | None) -> bool:
        if not filter_json:
            return True
        for predicate in json.loads(filter_json).get("predicates", []):
            assert predicate["operation"] in (1, "EQUALS"), f"fake supports EQUALS only: {predicate}"
            if item.get(predicate["key"]) != predicate.get("stringValue", predicate.get("string_value")):
                return False
        return True

    @staticmethod
    def _listing(key: str, items: list[dict[str, Any]]) -> tuple[int, Any]:
        # grpc-gateway omits empty repeated fields, as the real server does.
        return 200, ({key: items, "total_size": len(items)} if items else {})

    def _healthz(self, r: Recorded) -> tuple[int, Any]:
        return 200, {"multi_user": self.multi_user}

    def _list_pipelines(self, r: Recorded) -> tuple[int, Any]:
        namespace = r.q("namespace") or ""  # no namespace: the shared pipelines
        found = [p for p in self.pipelines.values() if self._matches(p, r.q("filter")) and p["namespace"] == namespace]
        return self._listing("pipelines", found)

    def _new_pipeline(self, display_name: str, description: str | None, namespace: str | None) -> dict[str, Any]:
        pipeline = {
            "pipeline_id": self._id("pipeline"),
            "display_name": display_name,
            "name": display_name,
            "description": description or "",
            "namespace": namespace or "",
            "created_at": CREATED_AT,
        }
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        self.versions[pipeline["pipeline_id"]] = []
        return pipeline

    def _new_version(self, pipeline_id: str, name: str, spec: bytes, description: str | None) -> dict[str, Any]:
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": self._id("version"),
            "display_name": name,
            "name": name,
            "description": description or "",
            "created_at": CREATED_AT,
            "spec": spec.decode(),  # not an API field: kept for assertions
        }
        self.versions[pipeline_id].append(version)
        return version

    @staticmethod
    def _public(item: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in item.items() if k != "spec"}

    def _create_pipeline(self, r: Recorded) -> tuple[int, Any]:
        body = r.json()
        namespace = body.get("namespace") or ""
        if any(
            p["display_name"] == body["display_name"] and p["namespace"] == namespace for p in self.pipelines.values()
        ):
            return 409, {"error": "pipeline exists", "code": 6}
        return 200, self._new_pipeline(body["display_name"], body.get("description"), body.get("namespace"))

    def _upload(self, r: Recorded) -> tuple[int, Any]:
        name = r.q("name") or r.q("display_name") or "uploaded"
        pipeline = self._new_pipeline(name, r.q("description"), r.q("namespace"))
        self._new_version(pipeline["pipeline_id"], name, r.uploaded_file()[1], r.q("description"))
        return 200, pipeline

    def _upload_version(self, r: Recorded) -> tuple[int, Any]:
        pipeline_id = r.q("pipelineid") or ""
        if pipeline_id not in self.pipelines:
            return 404, {"error": f"pipeline {pipeline_id} not found", "code": 5}
        name = r.q("name") or r.q("display_name") or ""
        if any(v["display_name"] == name for v in self.versions[pipeline_id]):
            return 409, {"error": f"version {name} exists", "code": 6}
        return 200, self._public(self._new_version(pipeline_id, name, r.uploaded_file()[1], r.q("description")))

    def _list_versions(self, r: Recorded, pid: str) -> tuple[int, Any]:
        found = [self._public(v) for v in self.versions.get(pid, []) if self._matches(v, r.q("filter"))]
        return self._listing("pipeline_versions", found)

    def _list_experiments(self, r: Recorded) -> tuple[int, Any]:
        namespace = r.q("namespace") or ""
        found = [
            e
            for e in self.experiments.values()
            if self._matches(e, r.q("filter")) and (not self.multi_user or e["namespace"] == namespace)
        ]
        return self._listing("experiments", found)

    def _create_experiment(self, r: Recorded) -> tuple[int, Any]:
        body = r.json()
        experiment = {
            "experiment_id": self._id("experiment"),
            "display_name": body["display_name"],
            "description": body.get("description") or "",
            "namespace": body.get("namespace") or "",
            "storage_state": "AVAILABLE",
            "created_at": CREATED_AT,
        }
        self.experiments[experiment["experiment_id"]] = experiment
        return 200, experiment

    def _create_run(self, r: Recorded) -> tuple[int, Any]:
        run = {**r.json(), "run_id": self._id("run"), "state": "PENDING", "created_at": CREATED_AT}
        self.runs[run["run_id"]] = run
        return 200, run

    def _create_recurring_run(self, r: Recorded) -> tuple[int, Any]:
        body = r.json()
        recurring = {**body, "recurring_run_id": self._id("recurring"), "status": "ENABLED", "created_at": CREATED_AT}
        self.recurring_runs[recurring["recurring_run_id"]] = recurring
        return 200, recurring
