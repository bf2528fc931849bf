"""The model registry: immutable versions with checksums and a `champion` alias, in an object store.

Layout in the `models` bucket:
  <name>/<version>/<model files>       weights, config, exported program
  <name>/<version>/model-card.json     metrics, parameters, lineage
  <name>/<version>/model.sig           the register step's signature over the files above (tsr.core.signing)
  <name>/<version>/SHA256SUMS          sha256 of every file above; written last
  <name>/champion                      JSON pointing at a version; moved only after SHA256SUMS
  <name>/_aliases/champion/history/<seq>.json   one immutable record per move, never overwritten

A version without SHA256SUMS is incomplete: readers never list, resolve or load it. SHA256SUMS vouches
for the transfer only (whoever can write the bucket can rewrite it too); `fetch` verifies model.sig with
the public key before it returns a directory, and refuses unsigned versions unless an operator opted in.

An alias moves by compare-and-swap (`ObjectStore.put_bytes_if`: a conditional PUT on MinIO, a locked
replace in a directory store): of two promotions at the same moment exactly one moves it from a given
state, the other reads again and either moves on from the new state (recording it as `previous`) or,
when the alias already points where it wanted, reports that nothing moved. Each move then appends its
record to the alias history; a move that died between the two is completed by the next one, since the
alias record carries everything its history entry holds. `_aliases` starts with `_`, which no version
id can (`check_name`), so publishing never touches it.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import random
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tsr.core.config import DEFAULT_BUCKET, StoreConfig
from tsr.core.signing import SIG_FILE, SignatureError, Trust, sign_directory, signing_key, verify_directory
from tsr.core.store import ObjectStore, StoreError, open_store, split_s3_uri

log = logging.getLogger(__name__)

SUMS_FILE = "SHA256SUMS"
CARD_FILE = "model-card.json"
CHAMPION = "champion"
DEFAULT_MODEL_NAME = "gtsrb-classifier"
ALIAS_DIR = "_aliases"
STORE_STATE_SUFFIX = ".store-objects.json"  # beside a cached version: the store objects' tags at download
ALIAS_MOVE_ATTEMPTS = 50  # compare-and-swap rounds before a move gives up (each lost round is another's move)
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


class RegistryError(RuntimeError):
    """A registry rule was broken (immutability, checksum, missing version); the message says which."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_name(name: str, what: str = "model name") -> str:
    if not _NAME_RE.match(name):
        raise RegistryError(f"invalid {what} {name!r}: use lowercase letters, digits, '.', '_', '-' (max 63)")
    return name


def new_version_id(now: datetime | None = None) -> str:
    """Sortable by time, unique by a random suffix: 20261123-140501-3fa2c1."""
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def format_sums(sums: dict[str, str]) -> str:
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items()))


def parse_sums(text: str, source: str) -> dict[str, str]:
    sums: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition("  ")
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", digest) or not name or "/" in name or name.startswith("."):
            raise RegistryError(f"{source} line {lineno}: malformed checksum line {line!r}")
        sums[name] = digest
    if not sums:
        raise RegistryError(f"{source} is empty")
    return sums


class AnyVersion(enum.Enum):
    """The default of `set_alias(only_from=...)`: move whatever the alias points at now."""

    ANY = "any"


ANY_VERSION = AnyVersion.ANY


@dataclass(frozen=True)
class AliasMove:
    """What `set_alias` did: `version` is where the alias points afterwards, `moved` whether this call
    moved it, `previous` the version it pointed at before that move, `seq` the move's number in the
    alias history, `reason` a phrase for people ("moved from X", "already points at X", ...)."""

    alias: str
    version: str | None
    previous: str | None
    moved: bool
    seq: int
    reason: str


@dataclass
class Registry:
    store: ObjectStore

    @classmethod
    def from_config(cls, config: StoreConfig, bucket: str = DEFAULT_BUCKET) -> Registry:
        return cls(open_store(config, bucket))

    def uri(self, name: str, version: str) -> str:
        return self.store.uri(f"{name}/{version}")

    # ---- writing ---------------------------------------------------------------------------
    def publish(
        self,
        name: str,
        model_dir: Path,
        card: dict[str, Any],
        version: str | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        sign: bool = True,
        key: Path | None = None,
    ) -> str:
        """Upload a model directory as a new immutable version and return the version id.

        `on_progress(bytes_done, bytes_total)` is called after each object (the register step
        prints it; the CLI turns those lines into a bar).

        Fails with a RegistryError when the store fails midway: the version then has no
        SHA256SUMS, so it stays invisible and no alias moves. Publishing again with the same
        `version` completes it (the half-written objects are replaced); a complete version is
        never overwritten.

        With `sign` (the default) the files and the card are signed with `key` (default: $TSR_SIGNING_KEY,
        else the local key pair) and `model.sig` is uploaded before the commit marker.
        """
        check_name(name)
        version = check_name(version or new_version_id(), "version")
        files = sorted(p for p in model_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise RegistryError(f"model directory {model_dir} is empty")
        reserved = {SUMS_FILE, CARD_FILE, SIG_FILE} & {p.name for p in files}
        if reserved:
            raise RegistryError(f"model directory {model_dir} must not contain {sorted(reserved)}")
        self.store.ensure_bucket()
        prefix = f"{name}/{version}/"
        uri = self.uri(name, version)
        leftovers = self.store.list(prefix)
        if prefix + SUMS_FILE in leftovers:
            raise RegistryError(f"version {uri} already exists; versions are immutable")
        sums = {p.name: sha256_file(p) for p in files}
        card = {**card, "name": name, "version": version, "uri": uri}
        card_bytes = (json.dumps(card, indent=2, sort_keys=True) + "\n").encode()
        sums[CARD_FILE] = hashlib.sha256(card_bytes).hexdigest()
        signature = _sign(files, card_bytes, key) if sign else None
        if signature is not None:
            sums[SIG_FILE] = hashlib.sha256(signature).hexdigest()
        uploads = len(files) + 2 + (signature is not None)
        done = 0
        sums_bytes = format_sums(sums).encode()
        total_bytes = sum(p.stat().st_size for p in files) + len(card_bytes) + len(sums_bytes)
        total_bytes += len(signature or b"")
        sent = 0

        def progress(nbytes: int) -> None:
            nonlocal sent
            sent += nbytes
            if on_progress is not None:
                on_progress(sent, total_bytes)

        try:
            # Objects of an earlier, interrupted publish of this version (no SHA256SUMS: never visible)
            # are overwritten below; any that the new file set lacks are removed, so a retry after a
            # failure yields exactly what an uninterrupted publish would have.
            for stale in sorted(set(leftovers) - {prefix + n for n in sums}):
                self.store.remove(stale)
            for path in files:
                self.store.put_file(prefix + path.name, path)
                done += 1
                progress(path.stat().st_size)
            self.store.put_bytes(prefix + CARD_FILE, card_bytes, "application/json")
            done += 1
            progress(len(card_bytes))
            if signature is not None:  # before the commit marker: nothing half-signed is ever visible
                self.store.put_bytes(prefix + SIG_FILE, signature, "application/json")
                done += 1
                progress(len(signature))
            # The commit point: only now does the version become visible to readers.
            self.store.put_bytes(prefix + SUMS_FILE, sums_bytes, "text/plain")
        except StoreError as exc:
            if done < uploads - 1:
                state = f"The version has no {SUMS_FILE}, so readers do not see it"
            else:  # the commit marker's own upload failed: the server may or may not have stored it
                state = f"Its {SUMS_FILE} (the commit marker) may be missing: readers see it only if it is there"
            raise RegistryError(
                f"publishing {uri} stopped after {done} of {uploads} objects: {exc}. {state}; no alias moved. "
                f"Publish again with version={version!r} to complete it"
            ) from exc
        progress(len(sums_bytes))
        return version

    def set_alias(
        self, name: str, version: str, alias: str = CHAMPION, *, only_from: str | AnyVersion | None = ANY_VERSION
    ) -> AliasMove:
        """Point `alias` at a complete `version`, atomically against concurrent moves, and record the move.

        Re-pointing it where it already points is a no-op (`moved=False`, no history entry). With
        `only_from`, the alias moves only while it still points at that version (None: while it does
        not exist yet): how a gate that compared the model with the champion it saw promotes it without
        overriding a champion that another run set meanwhile. Raises `RegistryError` when the version is
        not complete, or when the alias kept changing under `ALIAS_MOVE_ATTEMPTS` attempts.
        """
        check_name(name)
        check_name(alias, "alias")
        if not self.is_complete(name, version):
            raise RegistryError(f"cannot point {alias!r} at {self.uri(name, version)}: no such complete version")
        key = f"{name}/{alias}"
        move_id = secrets.token_hex(8)
        for attempt in range(ALIAS_MOVE_ATTEMPTS):
            current, etag = self._alias_record(name, alias)
            if current is not None:
                self._complete_history(name, alias, current)
                if current.get("move_id") == move_id:  # an earlier round landed though its answer was lost
                    return _moved(alias, current)
            now = str(current["version"]) if current is not None else None
            seq = int(current.get("seq", 0)) if current is not None else 0
            if now == version:
                return AliasMove(alias, now, _previous(current), False, seq, f"already points at {version}")
            if only_from is not ANY_VERSION and now != only_from:
                reason = f"it points at {now or 'no version'}, not at {only_from or 'no version'} as required"
                return AliasMove(alias, now, _previous(current), False, seq, reason)
            record = {
                "version": version,
                "uri": self.uri(name, version),
                "previous": now,
                "updated": datetime.now(UTC).isoformat(timespec="seconds"),
                "seq": seq + 1,
                "move_id": move_id,
            }
            if self.store.put_bytes_if(key, json.dumps(record, indent=2).encode(), etag, "application/json"):
                self._complete_history(name, alias, record)
                return _moved(alias, record)
            time.sleep(random.uniform(0, min(0.5, 0.01 * 2**attempt)))  # another move won this round
        raise RegistryError(
            f"cannot move {alias!r} of {self.store.uri(name)} to {version}: it changed under {ALIAS_MOVE_ATTEMPTS} "
            "attempts in a row (concurrent moves); try again"
        )

    def _alias_record(self, name: str, alias: str) -> tuple[dict[str, Any] | None, str | None]:
        """The alias object and its ETag, or (None, None) when the alias does not exist."""
        try:
            data, etag = self.store.get_bytes_etag(f"{name}/{alias}")
        except FileNotFoundError:
            return None, None
        record: dict[str, Any] = json.loads(data)
        return record, etag

    def _history_key(self, name: str, alias: str, seq: int) -> str:
        return f"{name}/{ALIAS_DIR}/{alias}/history/{seq:010d}.json"

    def _complete_history(self, name: str, alias: str, record: dict[str, Any]) -> None:
        """Write the history entry of `record` unless it is there: create-only, so never overwritten.

        A record written before the history existed (no `seq`) is entry 0.
        """
        key = self._history_key(name, alias, int(record.get("seq", 0)))
        if not self.store.exists(key):
            self.store.put_bytes_if(key, json.dumps(record, indent=2).encode(), None, "application/json")

    def alias_history(self, name: str, alias: str = CHAMPION) -> list[dict[str, Any]]:
        """Every move of `alias`, oldest first (each record: version, uri, previous, updated, seq).

        The current record is included even when a move died before appending its entry."""
        prefix = f"{name}/{ALIAS_DIR}/{alias}/history/"
        entries = {}
        for key in self.store.list(prefix):
            record = json.loads(self.store.get_bytes(key))
            entries[int(record.get("seq", 0))] = record
        current, _ = self._alias_record(name, alias)
        if current is not None:
            entries.setdefault(int(current.get("seq", 0)), current)
        return [entries[seq] for seq in sorted(entries)]

    # ---- reading ---------------------------------------------------------------------------
    def is_complete(self, name: str, version: str) -> bool:
        return self.store.exists(f"{name}/{version}/{SUMS_FILE}")

    def versions(self, name: str) -> list[str]:
        """Complete versions, oldest first."""
        keys = self.store.list(f"{name}/")
        return sorted({k.split("/")[1] for k in keys if k.count("/") == 2 and k.endswith("/" + SUMS_FILE)})

    def get_alias(self, name: str, alias: str = CHAMPION) -> str | None:
        try:
            record = json.loads(self.store.get_bytes(f"{name}/{alias}"))
        except FileNotFoundError:
            return None
        return str(record["version"])

    def resolve(self, name: str, ref: str) -> str:
        """'champion' (or another alias), 'latest', or a version id -> a complete version id."""
        if ref == "latest":
            versions = self.versions(name)
            if not versions:
                raise RegistryError(f"model {name!r} has no versions in {self.store.uri(name)}")
            return versions[-1]
        if ref == CHAMPION:
            version = self.get_alias(name, ref)
            if version is None:
                raise RegistryError(f"model {name!r} has no {ref!r} alias in {self.store.uri(name)}")
            return version
        if not self.is_complete(name, ref):
            raise RegistryError(f"{self.uri(name, ref)} is not a complete version")
        return ref

    def read_card(self, name: str, version: str) -> dict[str, Any]:
        card: dict[str, Any] = json.loads(self.store.get_bytes(f"{name}/{version}/{CARD_FILE}"))
        return card

    def fetch(self, name: str, version: str, cache_dir: Path, trust: Trust | None = None) -> Path:
        """Download a version into `cache_dir/<name>/<version>`, verifying every sha256 and the signature.

        The signature (model.sig) is verified with `trust`'s public key (default: `Trust.from_env()`)
        before the directory is returned, so before anything in it is loaded; an unsigned version is
        refused unless `trust.allow_unsigned`. A cached copy is reused only while the store's objects
        are the ones it was downloaded from (their size/ETag, recorded beside it) and it still verifies;
        when the store's copy changed, a warning says so and the version is fetched and verified again.
        A bad download is deleted, never left where a later call could pick it up.
        """
        trust = Trust.from_env() if trust is None else trust
        uri = self.uri(name, version)
        source = f"{uri}/{SUMS_FILE}"
        try:
            sums_text = self.store.get_bytes(f"{name}/{version}/{SUMS_FILE}").decode()
            sums = parse_sums(sums_text, source)
        except FileNotFoundError as exc:
            raise RegistryError(f"{uri} is not a complete version (no {SUMS_FILE})") from exc
        target = cache_dir / name / version
        record = cache_dir / name / (version + STORE_STATE_SUFFIX)
        if target.is_dir():
            changed = self._changed_objects(name, version, sums, record)
            if changed is None:
                log.info("the cached copy of %s has no record of its store objects (older release): refetching", uri)
            elif changed:
                log.warning(
                    "the store's copy of %s changed since it was cached (%s): fetching and verifying it again",
                    uri,
                    ", ".join(changed[:5]),
                )
            elif not _matches(target, sums):
                log.warning("the cached copy of %s no longer matches its SHA256SUMS: fetching it again", uri)
            else:
                try:
                    verify_directory(target, uri, trust)
                    return target
                except SignatureError as exc:
                    log.warning("the cached copy of %s fails verification (%s): fetching it again", uri, exc)
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".download-"))
        try:
            for filename, digest in sums.items():
                self.store.get_file(f"{name}/{version}/{filename}", tmp / filename)
                actual = sha256_file(tmp / filename)
                if actual != digest:
                    raise RegistryError(
                        f"checksum mismatch for {uri}/{filename}: "
                        f"expected {digest[:12]}…, got {actual[:12]}…; refusing to load it"
                    )
            (tmp / SUMS_FILE).write_text(sums_text)
            try:
                verify_directory(tmp, uri, trust)
            except SignatureError as exc:
                raise RegistryError(str(exc)) from None
            tags = self._object_tags(name, version, sums)
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(target)
            scratch = record.with_name(f".{record.name}.{os.getpid()}")
            scratch.write_text(json.dumps(tags, indent=1, sort_keys=True))
            scratch.replace(record)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def _object_tags(self, name: str, version: str, sums: dict[str, str]) -> dict[str, str]:
        """The change tag (size, ETag) of each object of a version, SHA256SUMS included."""
        return {f: self.store.stat(f"{name}/{version}/{f}") for f in sorted([*sums, SUMS_FILE])}

    def _changed_objects(self, name: str, version: str, sums: dict[str, str], record: Path) -> list[str] | None:
        """Objects whose tags differ from those recorded when the cached copy was downloaded.

        None when there is no record (a cache written by an older release): it is fetched once more."""
        try:
            recorded = json.loads(record.read_text())
        except (OSError, ValueError):
            return None
        try:
            current = self._object_tags(name, version, sums)
        except FileNotFoundError as exc:
            return [str(exc)]
        return [f for f in sorted(set(current) | set(recorded)) if current.get(f) != recorded.get(f)]


def _moved(alias: str, record: dict[str, Any]) -> AliasMove:
    previous = _previous(record)
    reason = f"moved from {previous}" if previous else "created"
    return AliasMove(alias, str(record["version"]), previous, True, int(record["seq"]), reason)


def _previous(record: dict[str, Any] | None) -> str | None:
    previous = record.get("previous") if record is not None else None
    return str(previous) if previous else None


def _matches(directory: Path, sums: dict[str, str]) -> bool:
    return all((directory / f).is_file() and sha256_file(directory / f) == d for f, d in sums.items())


def downloaded_version(directory: Path) -> tuple[str, str] | None:
    """(version, uri) of a registry version that something else copied whole into `directory`, as KServe's
    storage-initializer copies every object of s3://<bucket>/<name>/<version>/ into /mnt/models: every file its
    SHA256SUMS names must match, and its model card names the version. None when the directory holds no
    SHA256SUMS and card (a model directory that never went through the registry)."""
    sums_path, card_path = directory / SUMS_FILE, directory / CARD_FILE
    if not (sums_path.is_file() and card_path.is_file()):
        return None
    sums = parse_sums(sums_path.read_text(), str(sums_path))
    if not _matches(directory, sums):
        raise RegistryError(f"{directory}: its files do not match its {SUMS_FILE} (an incomplete or altered copy)")
    card = json.loads(card_path.read_text())
    return str(card["version"]), str(card["uri"])


@dataclass(frozen=True)
class ModelSpec:
    """A parsed `--model` argument: a local directory or a registry name + version/alias."""

    directory: Path | None = None
    bucket: str = DEFAULT_BUCKET
    name: str = DEFAULT_MODEL_NAME
    ref: str = CHAMPION

    @property
    def needs_store(self) -> bool:
        return self.directory is None


def parse_model_spec(spec: str, default_name: str = DEFAULT_MODEL_NAME) -> ModelSpec:
    """Accepts `champion`, `latest`, `s3://models/<name>/<version|champion>`, `file://…`, or a directory."""
    if spec in {CHAMPION, "latest"}:
        return ModelSpec(name=default_name, ref=spec)
    if spec.startswith("s3://"):
        bucket, key = split_s3_uri(spec)
        parts = key.split("/")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"model URI {spec!r} must look like s3://<bucket>/<name>/<version|champion>")
        return ModelSpec(bucket=bucket, name=check_name(parts[0]), ref=parts[1])
    if spec.startswith("file://"):
        spec = spec[len("file://") :]
    elif "://" in spec:
        raise ValueError(f"model {spec!r}: unknown URI scheme (use s3://, file://, a directory or 'champion')")
    path = Path(spec)
    if not path.is_dir():
        raise ValueError(f"model {spec!r}: no such directory (nor 'champion', 'latest' or an s3:// URI)")
    return ModelSpec(directory=path)


def materialize(
    spec: ModelSpec, store: StoreConfig | None, cache_dir: Path, trust: Trust | None = None
) -> tuple[Path, str]:
    """Return a verified local model directory for `spec` and the URI it came from.

    A local directory that is a copy of a registry version (it has model.sig or SHA256SUMS: KServe's
    /mnt/models) is verified like a fetch; so is any directory when `trust.require_signed_dirs`
    ($TSR_REQUIRE_SIGNED=1). Other directories (a training run's output) are the operator's own files.
    """
    trust = Trust.from_env() if trust is None else trust
    if spec.directory is not None:
        directory = spec.directory
        label = str(directory.resolve())
        if trust.require_signed_dirs or (directory / SIG_FILE).is_file() or (directory / SUMS_FILE).is_file():
            try:
                verify_directory(directory, label, trust)
            except SignatureError as exc:
                raise RegistryError(str(exc)) from None
        return directory, label
    if store is None:
        raise RegistryError("a registry model was asked for but no store is configured")
    registry = Registry.from_config(store, spec.bucket)
    version = registry.resolve(spec.name, spec.ref)
    return registry.fetch(spec.name, version, cache_dir, trust), registry.uri(spec.name, version)


def _sign(files: list[Path], card_bytes: bytes, key: Path | None) -> bytes:
    """The signature of a version's files plus its card, made in a scratch copy (hard links)."""
    try:
        key = signing_key() if key is None else key
    except (SignatureError, OSError) as exc:  # $TSR_SIGNING_KEY names no file; no writable state dir
        raise RegistryError(f"cannot sign the version: {exc}") from exc
    with tempfile.TemporaryDirectory(prefix="tsr-sign-") as scratch:
        stage = Path(scratch)
        for path in files:
            try:
                os.link(path, stage / path.name)
            except OSError:  # another filesystem: copy
                shutil.copyfile(path, stage / path.name)
        (stage / CARD_FILE).write_bytes(card_bytes)
        try:
            return sign_directory(stage, key).read_bytes()
        except Exception as exc:  # a bad key file: say which, in one line
            raise RegistryError(f"cannot sign the version with key {key}: {exc}") from exc
