"""Argument checks at the boundary, shared by the CLI, the components' configs and the local pipeline.

One error type, `InvalidParameter`, carries the parameter's name apart from the reason, so the
CLI can point at the option it came from (a usage error, exit code 2) while a component or a
Python caller gets a plain `ValueError` whose message names the parameter. Every check here is
cheap and side-effect free: it runs before anything is read, started or written.
"""

from __future__ import annotations

import re
from pathlib import Path

# S3 bucket naming rules (lowercase letters, digits, '.', '-'; 3-63 characters).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class InvalidParameter(ValueError):
    """A parameter value that can never work; `param` is its Python name, `reason` what is wrong."""

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"{param}: {reason}")
        self.param = param
        self.reason = reason


def check_range(
    param: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """`value` within [low, high]; an open end excludes the bound itself (val_fraction is in (0, 1))."""
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not (too_low or too_high):
        return
    if high is None:
        bound = f"{'>' if low_open else '>='} {low:g}"
    elif low is None:
        bound = f"{'<' if high_open else '<='} {high:g}"
    else:
        bound = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    raise InvalidParameter(param, f"must be {bound}, got {value:g}")


def check_choice(param: str, value: str, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise InvalidParameter(param, f"must be one of {', '.join(choices)}; got {value!r}")


def check_s3_uri(param: str, uri: str) -> tuple[str, str]:
    """'s3://bucket/prefix' -> (bucket, prefix); refuses a missing or malformed bucket and '.'/'..' segments."""
    rest = uri[len("s3://") :] if uri.startswith("s3://") else None
    if rest is None:
        raise InvalidParameter(param, f"{uri!r} is not an s3:// URI")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise InvalidParameter(param, f"{uri!r} has no bucket name (expected s3://bucket/prefix)")
    if not _BUCKET_RE.match(bucket):
        raise InvalidParameter(param, f"{uri!r}: invalid bucket name {bucket!r} (lowercase letters, digits, '.', '-')")
    segments = [s for s in prefix.split("/") if s]
    if any(s in {".", ".."} for s in segments):
        raise InvalidParameter(param, f"{uri!r}: '.' and '..' are not allowed in an object prefix")
    return bucket, "/".join(segments)


def check_data_source(param: str, source: str, *, must_exist: bool) -> None:
    """A data source is a local directory or s3://bucket/prefix; any other scheme is refused.

    `must_exist` checks the directory on this machine (the CLI and the local runner); a cluster
    step's path is only checked where it runs.
    """
    if not source:
        raise InvalidParameter(param, "is empty (a directory or s3://bucket/prefix)")
    if "://" in source:
        scheme = source.split("://", 1)[0]
        if scheme != "s3":
            raise InvalidParameter(param, f"{source!r}: unknown URI scheme {scheme!r} (use a directory or s3://)")
        check_s3_uri(param, source)
        return
    if must_exist:
        check_existing_dir(param, Path(source))


def check_existing_dir(param: str, path: Path) -> None:
    if not path.exists():
        raise InvalidParameter(param, f"{path} does not exist")
    if not path.is_dir():
        raise InvalidParameter(param, f"{path} is a file, not a directory")


def check_output_dir(param: str, path: Path, replaceable: frozenset[str] = frozenset()) -> None:
    """An output directory must be creatable: absent, empty, or holding only `replaceable` files
    (a previous output of the same step, which is then replaced as a whole)."""
    if path.exists():
        if not path.is_dir():
            raise InvalidParameter(param, f"{path} is a file, not a directory")
        foreign = sorted(p.name for p in path.iterdir() if p.name not in replaceable)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
            raise InvalidParameter(param, f"{path} is not empty ({shown}); refusing to write into it")
        return
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InvalidParameter(param, f"{path}: {parent} is a file, not a directory")
            return


def check_registry_name(param: str, name: str, what: str = "model name") -> None:
    """Registry model names and version ids become object keys: no '/', no '..', lowercase (tsr.core.registry)."""
    from tsr.core.registry import RegistryError, check_name

    try:
        check_name(name, what)
    except RegistryError as exc:
        raise InvalidParameter(param, str(exc)) from exc


def check_model_ref(param: str, ref: str) -> None:
    """'champion', 'latest' or a version id (checked like a name, so it cannot leave its prefix)."""
    from tsr.core.registry import RegistryError, check_name

    if ref in {"champion", "latest"}:
        return
    try:
        check_name(ref, "version")
    except RegistryError as exc:
        raise InvalidParameter(param, f"{exc}, or 'champion' / 'latest'") from exc
