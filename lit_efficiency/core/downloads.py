"""Downloads that keep nothing unverified: https only, a published sha256 checked before use, atomic, bounded.

:func:`fetch_verified` is the one download path of the package (the dynamic-graph datasets use it):

* the URL must be ``https://`` (``http``, ``file``, ``ftp`` ...: a one-line :class:`~lit_efficiency.core.errors.
  ConfigError`);
* the response is streamed into a temp file in the target's folder, at most :data:`MAX_DOWNLOAD_BYTES`;
* an archive member is taken only if it is a regular file with a plain relative name, in an archive with no absolute
  or ``..`` member names, and no larger than :data:`MAX_UNPACKED_BYTES`; gzip data is unpacked up to that size too;
* the sha256 of the payload (the unpacked bytes the loader reads: a recompressed copy still matches) must equal the
  published one, else a one-line :class:`~lit_efficiency.core.errors.DataError`;
* only then is the payload renamed into place (never through a symlink); the temp file is removed on every path, so a
  failed or mismatching download leaves nothing, and no other file is touched.

:func:`verify_file` checks a cached download the same way before each use; :func:`gunzip_bounded` is the bounded
gzip reader used for every gzip file the package reads.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any

from lit_efficiency.core.errors import ConfigError, DataError
from lit_efficiency.core.paths import atomic_write_bytes

#: Largest response accepted, bytes.
MAX_DOWNLOAD_BYTES = 256 << 20
#: Largest unpacked payload (gzip data, archive member), bytes.
MAX_UNPACKED_BYTES = 1 << 30
_GZIP_MAGIC = b"\x1f\x8b"


def urlopen(url: str, timeout: float) -> Any:
    """The opener :func:`fetch_verified` reads through (``urllib``; tests put a local file server in its place)."""
    return urllib.request.urlopen(url, timeout=timeout)


def require_https(url: str, what: str = "url") -> None:
    """Refuse any URL that is not ``https://host/...``.

    Raises:
        ConfigError: another scheme (``http``, ``file``, ``ftp`` ...) or no host.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "https" or not parts.netloc:
        raise ConfigError(f"{what}: only https:// downloads are allowed, got {url!r}")


def gunzip_bounded(data: bytes, where: str, limit: int | None = None) -> bytes:
    """``data`` unpacked if it is gzip (by its magic bytes), else unchanged; at most ``limit`` bytes unpacked.

    Raises:
        DataError: corrupt gzip data, or more than ``limit`` (default :data:`MAX_UNPACKED_BYTES`) bytes once unpacked.
    """
    if data[:2] != _GZIP_MAGIC:
        return data
    limit = MAX_UNPACKED_BYTES if limit is None else limit
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            out = stream.read(limit + 1)
    except (OSError, EOFError) as err:
        raise DataError(f"{where}: corrupt gzip file ({err})") from None
    if len(out) > limit:
        raise DataError(f"{where}: gzip data unpacks to more than {limit} bytes (refused)")
    return out


def tar_member(data: bytes, member: str, where: str, limit: int | None = None) -> bytes:
    """The bytes of regular-file ``member`` of tar archive ``data`` (any compression tarfile reads).

    Raises:
        DataError: not a tar archive; a member with an absolute or ``..`` name; ``member`` missing, not a regular
            file (symlink, hard link, device, folder) or larger than ``limit`` (default :data:`MAX_UNPACKED_BYTES`).
    """
    limit = MAX_UNPACKED_BYTES if limit is None else limit
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            members = archive.getmembers()
            for info in members:
                name = PurePosixPath(info.name)
                if name.is_absolute() or ".." in name.parts:
                    raise DataError(f"{where}: archive member {info.name!r} points outside the archive (refused)")
            info = next((m for m in members if m.name == member), None)
            if info is None:
                raise DataError(f"{where}: archive has no file {member}")
            if not info.isfile():
                raise DataError(f"{where}: archive member {member} is a link or not a regular file (refused)")
            if info.size > limit:
                raise DataError(f"{where}: archive member {member} has {info.size} bytes, more than {limit} (refused)")
            stream = archive.extractfile(info)
            assert stream is not None  # a regular file always has a stream
            with stream:
                return stream.read(limit + 1)[:limit]
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{where}: not a readable tar archive ({err})") from None


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _download_to(url: str, folder: Path, timeout: float) -> bytes:
    """The response body (at most :data:`MAX_DOWNLOAD_BYTES`), streamed through a temp file in ``folder``."""
    fd, tmp_name = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urlopen(url, timeout) as response:
            total = 0
            while chunk := response.read(1 << 20):
                total += len(chunk)
                if total > MAX_DOWNLOAD_BYTES:
                    raise DataError(f"{url}: more than {MAX_DOWNLOAD_BYTES} bytes (refused; nothing was kept)")
                out.write(chunk)
        return tmp.read_bytes()
    finally:
        tmp.unlink(missing_ok=True)


def fetch_verified(url: str, target: str | os.PathLike, sha256: str, member: str | None = None,
                   timeout: float = 120.0) -> Path:  # fmt: skip
    """Download ``url`` to ``target`` and keep it only if its payload has the published ``sha256`` (module docstring).

    Args:
        url: an ``https://`` URL.
        target: where the payload goes (its folder is created).
        sha256: the published hex digest of the payload: the unpacked bytes (gzip data unpacked).
        member: take this member of a tar archive as the payload.
        timeout: socket timeout, seconds.

    Raises:
        ConfigError: not https; ``target`` is a symlink.
        DataError: the download failed, is too large, unpacks badly or too large, or its sha256 differs.
    """
    require_https(url)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = _download_to(url, target.parent, timeout)
    except OSError as err:  # URLError is an OSError
        raise DataError(f"{url}: download failed ({getattr(err, 'reason', err)}); nothing was kept") from None
    payload = tar_member(data, member, url) if member is not None else data
    got = sha256_hex(gunzip_bounded(payload, url))
    if got != sha256:
        raise DataError(f"{url}: sha256 {got} differs from the published {sha256} (download removed)")
    return atomic_write_bytes(target, payload)


def verify_file(path: str | os.PathLike, sha256: str) -> Path:
    """Check that file ``path`` (gzip data unpacked) has the published ``sha256`` before it is used.

    Raises:
        DataError: the digest differs (the file is damaged or not the published one).
    """
    path = Path(path)
    got = sha256_hex(gunzip_bounded(path.read_bytes(), str(path)))
    if got != sha256:
        raise DataError(f"{path}: sha256 {got} differs from the published {sha256}; delete it to download it again")
    return path
