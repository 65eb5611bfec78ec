"""Load and verify an artifact bundle before anything runs on it.

Every file listed in the manifest must exist and match its SHA-256; the manifest must be of a
known schema version. Errors name the offending file, so a field engineer knows what to replace.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from edge_ttt.manifest import SUPPORTED_SCHEMA_VERSIONS, Manifest

MANIFEST = "manifest.json"


class BundleError(RuntimeError):
    """The bundle is missing, incomplete, tampered with or of an unknown version."""


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its directory, manifest, and identity (SHA-256 of manifest.json)."""

    path: Path
    manifest: Manifest
    sha256: str

    def file(self, name: str) -> Path:
        return self.path / name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _refused(root: Path, what: str) -> BundleError:
    """One line: what is wrong, then the fix, which for every fault is the same (a bundle is
    written whole by export, never repaired by hand)."""
    return BundleError(
        f"{what}. Fix: re-create the bundle with `edge-ttt export --checkpoint MODEL.pt --out {root} --force`"
    )


def unreadable(path: Path, exc: BaseException) -> BundleError:
    """A bundle file whose hash matches the manifest but that its library cannot read (edited and
    re-hashed, or a broken export): one line naming the file, not the library's traceback."""
    detail = (str(exc).splitlines() or [""])[0][:200]
    return _refused(path.parent, f"{path} is corrupt: {type(exc).__name__}: {detail}")


def inconsistent(root: Path, what: str) -> BundleError:
    """The manifest and a graph of the bundle disagree (a manifest edited after export): one line,
    at load, rather than every window failing later."""
    return _refused(root, f"bundle {root}: {what}")


def _first_problem(exc: ValidationError) -> str:
    """pydantic's report spans many lines; the first problem and the count fit on one."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def load_bundle(path: str | Path) -> Bundle:
    """Read manifest.json, check its schema, then every file's presence and hash."""
    root = Path(path)
    manifest_path = root / MANIFEST
    if root.exists() and not root.is_dir():  # not a bundle to re-create there: the path is wrong
        raise BundleError(
            f"{root} is a file, not an artifact directory. Fix: name the directory `edge-ttt export` "
            "wrote (it holds manifest.json)"
        )
    if not root.is_dir():
        raise _refused(root, f"artifact directory {root} does not exist")
    if not manifest_path.is_file():
        raise _refused(root, f"{manifest_path} is missing: not an artifact bundle")
    raw = manifest_path.read_bytes()
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _refused(root, f"{manifest_path} is not valid JSON ({exc})") from exc
    version = doc.get("schema_version") if isinstance(doc, dict) else None
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise BundleError(
            f"{manifest_path}: unknown schema_version {version!r}; this edge-ttt reads "
            f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}. Fix: re-export the bundle with this "
            f"version (`edge-ttt export --checkpoint MODEL.pt --out {root} --force`) or upgrade edge-ttt"
        )
    try:
        manifest = Manifest.model_validate(doc)
    except ValidationError as exc:
        raise _refused(root, f"{manifest_path} is invalid: {_first_problem(exc)}") from exc
    for name, digest in manifest.files.items():
        file = root / name
        if Path(name).name != name:
            raise _refused(root, f"{manifest_path}: file entry {name!r} is not a plain file name")
        if not file.is_file():
            raise _refused(root, f"{file} is missing from the bundle")
        if sha256_file(file) != digest:
            raise _refused(root, f"{file} does not match its SHA-256 in the manifest (modified or corrupted)")
    return Bundle(path=root, manifest=manifest, sha256=hashlib.sha256(raw).hexdigest())
