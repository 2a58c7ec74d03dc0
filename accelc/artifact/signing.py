"""Optional provenance: an HMAC-SHA256 of the manifest under a team secret.

The manifest holds the sha256 of every other file, so a valid tag over the manifest vouches for
the whole artifact. stdlib `hmac` needs no dependency and fits what CI has: one secret shared by
the builder and the servers. (A public-key signature, e.g. ed25519, would let servers verify
without being able to sign; that needs a crypto library and is not offered here.)

Imports neither torch nor TVM: the runtime verifies with it.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os

from accelc.errors import ArtifactError

ENV = "ACCELC_SIGNING_KEY"
FIELD = "signature"
ALGORITHM = "hmac-sha256"
MIN_KEY_BYTES = 16  # below this a key can be guessed; 32 random bytes (64 hex digits) is the advice
KEY_HINT = "make one with: python -c 'import secrets; print(secrets.token_hex(32))'"


def key_from(key: str | bytes | None = None) -> bytes | None:
    """The key given, else $ACCELC_SIGNING_KEY, else None (signing is off)."""
    source = "the signing key"
    if key is None:
        key, source = os.environ.get(ENV) or None, f"${ENV}"
    if key is None:
        return None
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if len(raw) < MIN_KEY_BYTES:
        raise ArtifactError(f"{source} is {len(raw)} bytes long; a signing key needs at least {MIN_KEY_BYTES}",
                            code="E710", hint=KEY_HINT)
    return raw


def _tag(manifest: dict, key: bytes, where: str) -> str:
    """HMAC of the manifest without its signature, in one canonical JSON form (key order and
    whitespace do not matter; every value does)."""
    body = {name: value for name, value in manifest.items() if name != FIELD}
    try:
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"{where}: cannot canonicalise the manifest: {exc}", code="E701") from None
    return hmac.new(key, text.encode("ascii"), hashlib.sha256).hexdigest()


def sign(manifest: dict, key: bytes) -> dict:
    """The manifest (JSON values only) with its signature added."""
    return {**manifest, FIELD: {"algorithm": ALGORITHM, "hmac": _tag(manifest, key, "manifest")}}


def check(manifest: dict, key: bytes, where: str) -> None:
    """Refuse an unsigned manifest, or one whose tag does not match under `key`."""
    signature = manifest.get(FIELD)
    if signature is None:
        raise ArtifactError(f"{where} is not signed, and a signing key is set: unsigned artifacts are refused",
                            code="E711", hint=f"rebuild it with {ENV} set, or load it without a key")
    if not (isinstance(signature, dict) and signature.get("algorithm") == ALGORITHM
            and isinstance(signature.get("hmac"), str)):
        raise ArtifactError(f"{where}: malformed signature (expected {ALGORITHM})", code="E712")
    given = signature["hmac"].encode("utf-8", "surrogatepass")  # compare_digest refuses non-ASCII str
    if not hmac.compare_digest(given, _tag(manifest, key, where).encode("ascii")):
        raise ArtifactError(f"{where}: the signature does not match: the manifest was edited after signing, "
                            "or signed with another key", code="E712",
                            hint="rebuild it, or copy it again from the build that signed it")
