"""Downloads that keep nothing unverified: https only, a published sha256 checked before use, atomic, bounded.

Two entry points share one download step (:func:`download_verified`): :func:`fetch_verified` keeps one file (the
dynamic-graph datasets), :func:`fetch_tree` unpacks chosen members of a verified archive into a new folder (the
GLUE and IMDB archives, :mod:`lit_efficiency.power_bert.glue_sources`):

* the URL must be ``https://`` (``http``, ``file``, ``ftp`` ...: a one-line :class:`~lit_efficiency.core.errors.
  ConfigError`);
* the response is streamed into a temp file in the target's folder, at most :data:`MAX_DOWNLOAD_BYTES`;
* an archive member is taken only if it is a regular file with a plain relative name, in an archive with no absolute
  or ``..`` member names, and no larger than :data:`MAX_UNPACKED_BYTES`; gzip data is unpacked up to that size too;
* the sha256 of the payload (the unpacked bytes the loader reads: a recompressed copy still matches) must equal the
  published one, else a one-line :class:`~lit_efficiency.core.errors.DataError`;
* only then is the payload renamed into place (never through a symlink); the temp file is removed on every path, so a
  failed or mismatching download leaves nothing, and no other file is touched;
* an archive (zip or tar) is checked as downloaded (its published sha256 and byte size) before any member is read;
  the members are written into a temp folder beside the target, which is renamed into place only when complete.

:func:`verify_file` checks a cached download the same way before each use; :func:`gunzip_bounded` is the bounded
gzip reader used for every gzip file the package reads.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
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


def _safe_name(name: str, where: str) -> None:
    """Refuse an archive member name that is absolute or climbs out with ``..``."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise DataError(f"{where}: archive member {name!r} points outside the archive (refused)")


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
                _safe_name(info.name, where)
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


def _download_to(url: str, folder: Path, timeout: float, limit: int | None = None) -> bytes:
    """The response body (at most ``limit`` bytes: default :data:`MAX_DOWNLOAD_BYTES`) via a temp file in ``folder``."""
    limit = MAX_DOWNLOAD_BYTES if limit is None else limit
    fd, tmp_name = tempfile.mkstemp(prefix=".download-", suffix=".part", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urlopen(url, timeout) as response:
            total = 0
            while chunk := response.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    raise DataError(f"{url}: more than {limit} bytes (refused; nothing was kept)")
                out.write(chunk)
        return tmp.read_bytes()
    except OSError as err:  # URLError is an OSError
        raise DataError(f"{url}: download failed ({getattr(err, 'reason', err)}); nothing was kept") from None
    finally:
        tmp.unlink(missing_ok=True)


def _check_digest(got: str, sha256: str, url: str) -> None:
    if got != sha256:
        raise DataError(f"{url}: sha256 {got} differs from the published {sha256} (download removed)")


def download_verified(url: str, folder: str | os.PathLike, sha256: str, size: int, timeout: float = 120.0) -> bytes:
    """The bytes at ``url``, returned only if they are exactly the published file (``size`` bytes, ``sha256``).

    Args:
        url: an ``https://`` URL.
        folder: where the temp file of the download goes (created; nothing is left in it).
        sha256: the published hex digest of the file as downloaded.
        size: its published size in bytes (also the download cap).
        timeout: socket timeout, seconds.

    Raises:
        ConfigError: not https.
        DataError: the download failed, is larger than ``size``, or its size or sha256 differ.
    """
    require_https(url)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = _download_to(url, folder, timeout, limit=size)
    if len(data) != size:
        raise DataError(f"{url}: {len(data)} bytes, the published file has {size} (download removed)")
    _check_digest(sha256_hex(data), sha256, url)
    return data


def archive_files(data: bytes, where: str, select: Callable[[str], str | None]) -> dict[str, bytes]:
    """The regular-file members of zip or tar archive ``data`` that ``select`` names, unpacked with a size bound.

    Args:
        data: the archive (zip, or tar with any compression tarfile reads).
        where: the archive's name in error messages.
        select: member name -> relative path to keep it under, or None to skip it.

    Returns:
        ``{relative path: bytes}``.

    Raises:
        DataError: not a zip or tar archive, a member name that is absolute or has ``..``, a selected member that is a
            link or special file, or more than :data:`MAX_UNPACKED_BYTES` selected in all.
    """
    members = _zip_members(data, where) if zipfile.is_zipfile(io.BytesIO(data)) else _tar_members(data, where)
    out: dict[str, bytes] = {}
    total = 0
    for name, is_file, size, read in members:
        _safe_name(name, where)
        target = select(name)
        if target is None:
            continue
        if not is_file:
            raise DataError(f"{where}: archive member {name} is a link or not a regular file (refused)")
        total += size
        if total > MAX_UNPACKED_BYTES:
            raise DataError(f"{where}: archive unpacks to more than {MAX_UNPACKED_BYTES} bytes (refused)")
        out[target] = read(size)
    return out


def _zip_members(data: bytes, where: str) -> list[tuple[str, bool, int, Callable[[int], bytes]]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as err:
        raise DataError(f"{where}: not a readable zip archive ({err})") from None

    def reader(info: zipfile.ZipInfo) -> Callable[[int], bytes]:
        def read(size: int) -> bytes:
            try:
                with archive.open(info) as stream:
                    return stream.read(size + 1)[:size]
            except (zipfile.BadZipFile, OSError, EOFError) as err:
                raise DataError(f"{where}: corrupt zip member {info.filename} ({err})") from None

        return read

    def regular(info: zipfile.ZipInfo) -> bool:
        mode = info.external_attr >> 16  # unix mode bits, 0 when the archiver wrote none
        return not info.is_dir() and (mode == 0 or (mode & 0o170000) in (0, 0o100000))

    return [(i.filename, regular(i), i.file_size, reader(i)) for i in archive.infolist()]


def _tar_members(data: bytes, where: str) -> list[tuple[str, bool, int, Callable[[int], bytes]]]:
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
        infos = archive.getmembers()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{where}: not a readable zip or tar archive ({err})") from None

    def reader(info: tarfile.TarInfo) -> Callable[[int], bytes]:
        def read(size: int) -> bytes:
            stream = archive.extractfile(info)
            assert stream is not None  # only regular files are read
            with stream:
                return stream.read(size)

        return read

    return [(i.name, i.isfile(), i.size, reader(i)) for i in infos]


def write_tree(folder: str | os.PathLike, files: Mapping[str, bytes]) -> Path:
    """Create ``folder`` holding ``files`` (relative path -> bytes) all at once: a temp folder beside it, renamed.

    Raises:
        ConfigError: ``folder`` exists already or is a symlink (nothing is replaced).
    """
    folder = Path(folder)
    if folder.is_symlink() or folder.exists():
        raise ConfigError(f"{folder} exists already; remove it to unpack the download again")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".part", dir=folder.parent))
    try:
        for rel, data in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def fetch_tree(url: str, folder: str | os.PathLike, sha256: str, size: int, select: Callable[[str], str | None],
               timeout: float = 120.0) -> Path:  # fmt: skip
    """Download the archive at ``url``, check its published ``sha256`` and ``size``, unpack the members ``select``
    names (:func:`archive_files`) into the new folder ``folder`` (:func:`write_tree`); nothing is kept on failure.

    Raises:
        DataError: as :func:`download_verified` and :func:`archive_files`, or ``select`` names no member.
    """
    folder = Path(folder)
    data = download_verified(url, folder.parent, sha256, size, timeout)
    files = archive_files(data, url, select)
    if not files:
        raise DataError(f"{url}: the archive holds none of the files expected for {folder.name} (nothing was kept)")
    return write_tree(folder, files)


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
    data = _download_to(url, target.parent, timeout)
    payload = tar_member(data, member, url) if member is not None else data
    _check_digest(sha256_hex(gunzip_bounded(payload, url)), sha256, url)
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
