"""SHA-256 checks for downloaded or shared data, so a replay never runs on a corrupt copy."""

from __future__ import annotations

import hashlib
from pathlib import Path

SUMS_FILE = "SHA256SUMS"
_CHUNK = 1 << 20


class ChecksumError(RuntimeError):
    """A file's content does not match the checksum it was published with."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise ChecksumError unless `path` hashes to `expected` (hex, case-insensitive)."""
    actual = sha256_file(path)
    if actual != expected.strip().lower():
        raise ChecksumError(
            f"{path}: sha256 {actual} does not match the expected {expected.strip().lower()}"
        )


def read_sums(path: Path) -> dict[str, str]:
    """Parse a `sha256sum`-style file (`<hex>  <name>`, `*name` for binary mode)."""
    sums: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        digest, _, name = line.strip().partition(" ")
        name = name.strip().lstrip("*")
        if len(digest) != 64 or not name:
            raise ChecksumError(f"{path}:{number}: not a '<sha256>  <file>' line")
        sums[name] = digest.lower()
    return sums


def verify_folder(folder: Path, required: tuple[str, ...] = ()) -> list[str]:
    """Check every file listed in the folder's SHA256SUMS that is present.

    Files in `required` must be present when they are listed. Returns the names checked;
    an empty list when the folder carries no SHA256SUMS (nothing to verify against).
    """
    sums_path = folder / SUMS_FILE
    if not sums_path.is_file():
        return []
    checked = []
    for name, digest in read_sums(sums_path).items():
        target = folder / name
        if not target.is_file():
            if name in required:
                raise ChecksumError(f"{target}: listed in {SUMS_FILE} but missing")
            continue
        verify_sha256(target, digest)
        checked.append(name)
    return checked
