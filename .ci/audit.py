"""`make audit`: pip-audit on requirements.lock, with a verdict that cannot pass without checking anything.

pip-audit (PyPI's vulnerability service, `https://pypi.org/pypi/<name>/<version>/json`) skips a
dependency it cannot look up and still exits 0 with "No known vulnerabilities found": where that
service is not reachable (this development machine: its proxy answers 404), every one of the pins is
skipped and the audit looks clean. So this wrapper:

1. asks the service about the first pin once (PROBE_TIMEOUT_S) and stops with one line if it does
   not answer with advisory data;
2. runs pip-audit (`--no-deps --disable-pip`: the lock is a full `pip freeze`, every pin exact)
   under a wall-clock limit, JSON out;
3. fails if any pin was skipped (naming them) or has a known vulnerability, else says how many
   were checked.

Exit codes: 0 clean, 1 vulnerabilities found, 2 not audited (service unreachable, pins skipped,
pip-audit failed or timed out). Standard library only: it runs under the tool venv's Python.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

SERVICE = "https://pypi.org/pypi"
PROBE_TIMEOUT_S = 10.0
ELSEWHERE = (
    "it runs in CI: .github/workflows/audit.yml (every push to main, pull request, weekly) and before each release"
)


def pins(requirements: Path) -> list[tuple[str, str]]:
    """(name, version) of each `name==version` line."""
    found = []
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            found.append((name.strip(), version.split(";", 1)[0].strip()))
    return found


def probe(service: str, name: str, version: str, timeout_s: float) -> str | None:
    """None when the service answers for (name, version) with advisory data, else why not."""
    url = f"{service}/{name}/{version}/json"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        return f"{url} answered HTTP {exc.code}"
    except (OSError, ValueError) as exc:  # URLError, timeouts, resets, a body that is not JSON
        return f"{url}: {getattr(exc, 'reason', None) or exc}"
    if not isinstance(body, dict) or "vulnerabilities" not in body:
        return f"{url} answered without a 'vulnerabilities' field"
    return None


def fail(message: str, code: int = 2) -> int:
    print(f"make audit: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("requirements", type=Path)
    parser.add_argument("--pip-audit", required=True, help="the pip-audit executable (make audit's tool venv)")
    parser.add_argument("--timeout", type=float, default=600.0, help="wall-clock limit of the whole audit, seconds")
    parser.add_argument("--service", default=SERVICE, help="PyPI's JSON API (pip-audit's default service)")
    args = parser.parse_args(argv)

    pinned = pins(args.requirements)
    if not pinned:
        return fail(f"no name==version pins in {args.requirements}")
    unreachable = probe(args.service, *pinned[0], min(PROBE_TIMEOUT_S, args.timeout))
    if unreachable is not None:
        return fail(f"vulnerability service not reachable ({unreachable}): nothing was audited here; {ELSEWHERE}")

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        command = [args.pip_audit, "-r", str(args.requirements), "--no-deps", "--disable-pip"]
        command += ["--progress-spinner", "off", "--timeout", "15", "--format", "json", "--output", str(out)]
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, check=False)
        except subprocess.TimeoutExpired:
            return fail(
                f"pip-audit did not finish within {args.timeout:g} s (service slow or unreachable); {ELSEWHERE}"
            )
        if not out.is_file():
            last = (run.stderr.strip().splitlines() or [f"exit code {run.returncode}"])[-1]
            return fail(f"pip-audit failed without a report: {last}")
        deps = json.loads(out.read_text())["dependencies"]

    skipped = [d for d in deps if d.get("skip_reason")]
    if skipped and len(skipped) == len(deps):
        return fail(
            f"vulnerability service not reachable: pip-audit could look up none of the {len(deps)} pins "
            f"(e.g. {skipped[0]['skip_reason']}); {ELSEWHERE}"
        )
    vulnerable = [d for d in deps if d.get("vulns")]
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixed = ", ".join(vuln.get("fix_versions") or []) or "no fixed version"
            print(f"{dep['name']}=={dep['version']}: {vuln['id']} (fixed in: {fixed})")
    if skipped:
        names = ", ".join(f"{d['name']} ({d['skip_reason']})" for d in skipped)
        return fail(f"{len(skipped)} of {len(deps)} pins were not audited: {names}")
    if vulnerable:
        count = sum(len(d["vulns"]) for d in vulnerable)
        return fail(f"{count} known vulnerabilities in {len(vulnerable)} pinned packages (above)", code=1)
    print(
        f"make audit: {len(deps)} pins of {args.requirements} checked against {args.service}: no known vulnerabilities"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
