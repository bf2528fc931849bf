"""Signed model versions (OpenSSF `model-signing`, an elliptic-curve key pair).

SHA256SUMS only says that the bytes arrived as the store holds them: whoever can write the bucket can
rewrite a file and SHA256SUMS together. A version's `model.sig` is a signature, by the register step's
private key, over the sha256 of every file of the version (model files and model card; `model.sig`
and SHA256SUMS themselves excluded); readers verify it with the public key before anything is loaded.

Keys: `$TSR_SIGNING_KEY` (the private key's PEM file; the register step) and `$TSR_SIGNING_PUBLIC_KEY`
(the public key's PEM file; the predictor, `tsr evaluate`, the registry's fetch). Without them, a
local key pair in `<state>/signing/` is used, generated once (directory 0700, private key 0600, like
the embedded MinIO's credentials). `TSR_ALLOW_UNSIGNED=1` (or `--allow-unsigned`) lets an operator load
an unsigned version anyway (or a signed one where no public key is configured); every such load logs a
warning. A signature that does not verify with the configured public key is refused whatever the opt-in.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tsr.core.config import state_dir

log = logging.getLogger(__name__)

SIG_FILE = "model.sig"
ENV_SIGNING_KEY = "TSR_SIGNING_KEY"
ENV_PUBLIC_KEY = "TSR_SIGNING_PUBLIC_KEY"
ENV_ALLOW_UNSIGNED = "TSR_ALLOW_UNSIGNED"
ENV_REQUIRE_SIGNED = "TSR_REQUIRE_SIGNED"  # local directories too (the predictor's /mnt/models under KServe)
PRIVATE_KEY_NAME = "model-signing.key"
PUBLIC_KEY_NAME = "model-signing.pub"
NOT_SIGNED = (SIG_FILE, "SHA256SUMS")  # files of a version the signature does not cover


class SignatureError(RuntimeError):
    """A version is unsigned (and no opt-in) or its signature does not verify; one line says which."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def local_key_dir(environ: Mapping[str, str] | None = None) -> Path:
    return state_dir(environ) / "signing"


def ensure_local_key_pair(environ: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    """The local key pair (private, public), generated once: a P-256 key in a 0600 file, in a 0700 dir."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = local_key_dir(environ)
    private, public = directory / PRIVATE_KEY_NAME, directory / PUBLIC_KEY_NAME
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    if not private.is_file():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        scratch = directory / f".{PRIVATE_KEY_NAME}.{os.getpid()}"
        fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        try:
            os.link(scratch, private)  # atomic and create-only: a reader never sees half a key
        except FileExistsError:  # another process generated it meanwhile: use theirs
            pass
        finally:
            scratch.unlink()
    os.chmod(private, 0o600)
    if not public.is_file():
        key_pem = serialization.load_pem_private_key(private.read_bytes(), None)
        pub = key_pem.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        tmp = public.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_bytes(pub)
        tmp.replace(public)
    return private, public


def signing_key(environ: Mapping[str, str] | None = None) -> Path:
    """The private key the register step signs with: `$TSR_SIGNING_KEY`, else the local one."""
    environ = os.environ if environ is None else environ
    if environ.get(ENV_SIGNING_KEY):
        path = Path(environ[ENV_SIGNING_KEY]).expanduser()
        if not path.is_file():
            raise SignatureError(f"{ENV_SIGNING_KEY}={path}: no such file")
        return path
    return ensure_local_key_pair(environ)[0]


@dataclass(frozen=True)
class Trust:
    """How readers judge a version: the public key to verify with, and whether unsigned ones may load."""

    public_key: Path | None
    allow_unsigned: bool = False
    require_signed_dirs: bool = False  # local directories without model.sig are refused too

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, allow_unsigned: bool = False) -> Trust:
        environ = os.environ if environ is None else environ
        if environ.get(ENV_PUBLIC_KEY):
            public: Path | None = Path(environ[ENV_PUBLIC_KEY]).expanduser()
        else:
            local = local_key_dir(environ) / PUBLIC_KEY_NAME
            public = local if local.is_file() else None
        return cls(
            public_key=public,
            allow_unsigned=allow_unsigned or _truthy(environ.get(ENV_ALLOW_UNSIGNED)),
            require_signed_dirs=_truthy(environ.get(ENV_REQUIRE_SIGNED)),
        )


def sign_directory(directory: Path, key: Path) -> Path:
    """Write `directory/model.sig` over every file of `directory` (model.sig and SHA256SUMS excluded)."""
    import model_signing

    signature = directory / SIG_FILE
    hashing = model_signing.hashing.Config().set_ignored_paths(paths=list(NOT_SIGNED), ignore_git_paths=False)
    config = model_signing.signing.Config().use_elliptic_key_signer(private_key=key)
    config.set_hashing_config(hashing).sign(directory, signature)
    return signature


def _reason(exc: BaseException) -> str:
    text = str(exc)
    changed = re.findall(r"Hash mismatch for \\?'([^'\\]+)\\?'", text)  # the names, quoted in a list's repr
    if changed:
        return f"content differs from the signed content: {', '.join(changed)}"
    extra = re.search(r"Extra files found in model [^:]*: ([^\"\]]+)", text)
    if extra:
        return f"files that are not signed: {extra.group(1).strip()}"
    if "Key mismatch" in text:
        return "signed by another key than the configured public key"
    first = text.splitlines()[0] if text else type(exc).__name__
    return f"signature does not verify ({first[:200]})"


def verify_directory(directory: Path, label: str, trust: Trust) -> bool:
    """Verify `directory` against its model.sig before anything in it is loaded; True when signed.

    Raises SignatureError (one line: `label` and the reason) when the signature does not verify, or
    when there is none and `trust.allow_unsigned` is off; an accepted unsigned version logs a warning.
    """
    signature = directory / SIG_FILE
    if not signature.is_file():
        if trust.allow_unsigned:
            log.warning(
                "loading UNSIGNED model %s (no %s): allowed by %s=1/--allow-unsigned",
                label,
                SIG_FILE,
                ENV_ALLOW_UNSIGNED,
            )
            return False
        raise SignatureError(
            f"refusing {label}: unsigned (no {SIG_FILE}); "
            f"set {ENV_ALLOW_UNSIGNED}=1 or --allow-unsigned to load it anyway"
        )
    if trust.public_key is None:
        if trust.allow_unsigned:  # e.g. a cluster whose readers have no key yet: as unverified as unsigned
            log.warning(
                "loading model %s with its signature NOT verified (no public key; set %s): allowed by %s=1",
                label,
                ENV_PUBLIC_KEY,
                ENV_ALLOW_UNSIGNED,
            )
            return False
        raise SignatureError(
            f"refusing {label}: no public key to verify its signature with (set {ENV_PUBLIC_KEY} to a PEM file)"
        )
    if not trust.public_key.is_file():
        raise SignatureError(f"refusing {label}: public key {trust.public_key} not found")
    import model_signing

    try:
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=trust.public_key).verify(
            directory, signature
        )
    except Exception as exc:  # model_signing raises ValueError, JSON and protobuf errors alike
        raise SignatureError(f"refusing {label}: {_reason(exc)}") from None
    return True
