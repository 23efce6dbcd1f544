"""Downloads: https only, the published sha256 checked before use, temp file + rename, bounded unpacking.

No network: :func:`lit_efficiency.core.downloads.urlopen` (the one opener of the download path) is replaced by a
server of in-memory files, so every other step (scheme check, size caps, unpacking, digest, rename) is the real code.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import tarfile
import urllib.error
from pathlib import Path

import pytest

from lit_efficiency.core import downloads
from lit_efficiency.core.downloads import fetch_verified, gunzip_bounded, require_https, tar_member, verify_file
from lit_efficiency.core.errors import ConfigError, DataError
from lit_efficiency.core.paths import resolve_data_root
from lit_efficiency.dyn_gnn import datasets
from lit_efficiency.dyn_gnn.datasets import DATASETS, dataset_file, load_dataset

URL = "https://example.org/data/file.gz"


@pytest.fixture
def serve(monkeypatch):
    """``serve({url: bytes})``: what the opener answers (an unknown URL fails like a 404)."""
    files: dict[str, bytes] = {}
    requested: list[str] = []

    def opener(url: str, timeout: float):
        requested.append(url)
        if url not in files:
            raise urllib.error.URLError("HTTP Error 404: Not Found")
        return io.BytesIO(files[url])

    monkeypatch.setattr(downloads, "urlopen", opener)

    def add(mapping: dict[str, bytes]) -> list[str]:
        files.update(mapping)
        return requested

    return add


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tar(members: list[tarfile.TarInfo], payloads: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:bz2") as archive:
        for info in members:
            data = payloads.get(info.name, b"")
            info.size = len(data) if info.isfile() else 0
            archive.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*")) if folder.exists() else []


# ---------------------------------------------------------------- schemes
@pytest.mark.parametrize("url", ["http://example.org/a.gz", "file:///etc/passwd", "ftp://example.org/a", "https:/x"])
def test_only_https_is_accepted(url, tmp_path, serve):
    requested = serve({url: b"data"})
    with pytest.raises(ConfigError, match="only https:// downloads are allowed"):
        fetch_verified(url, tmp_path / "out", _sha(b"data"))
    assert requested == [] and _leftovers(tmp_path) == []
    require_https("https://example.org/a.gz")  # the accepted form


# ---------------------------------------------------------------- checksum, atomicity
def test_verified_download_lands_and_a_mismatch_leaves_nothing(tmp_path, serve):
    payload = b"1 2 0\n2 3 190080\n"
    serve({URL: gzip.compress(payload), "https://example.org/bad.gz": gzip.compress(payload + b"3 1 5\n")})
    target = fetch_verified(URL, tmp_path / "cache" / "file.gz", _sha(payload))  # digest of the unpacked bytes
    assert gzip.decompress(target.read_bytes()) == payload and _leftovers(tmp_path / "cache") == ["file.gz"]
    (tmp_path / "cache" / "other.txt").write_text("keep")
    with pytest.raises(DataError, match="sha256 .* differs from the published") as info:
        fetch_verified("https://example.org/bad.gz", tmp_path / "cache" / "bad.gz", _sha(payload))
    assert "\n" not in str(info.value)
    assert _leftovers(tmp_path / "cache") == ["file.gz", "other.txt"]  # no partial file, nothing else changed
    assert (tmp_path / "cache" / "other.txt").read_text() == "keep"


def test_a_symlinked_target_is_refused(tmp_path, serve):
    serve({URL: b"x"})
    outside = tmp_path / "outside"
    outside.write_text("precious")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "file.gz").symlink_to(outside)
    with pytest.raises(ConfigError, match="symlink"):
        fetch_verified(URL, tmp_path / "cache" / "file.gz", _sha(b"x"))
    assert outside.read_text() == "precious"


def test_oversized_response_is_refused(tmp_path, serve, monkeypatch):
    monkeypatch.setattr(downloads, "MAX_DOWNLOAD_BYTES", 1000)
    serve({URL: b"a" * 1001})
    with pytest.raises(DataError, match="more than 1000 bytes"):
        fetch_verified(URL, tmp_path / "f", _sha(b"a" * 1001))
    assert _leftovers(tmp_path) == []


def test_failed_download_is_one_line_and_leaves_nothing(tmp_path, serve):
    serve({})
    with pytest.raises(DataError, match="download failed .*404") as info:
        fetch_verified(URL, tmp_path / "f", "0" * 64)
    assert "\n" not in str(info.value) and _leftovers(tmp_path) == []


# ---------------------------------------------------------------- bounded unpacking
def test_gzip_bomb_is_refused(monkeypatch):
    bomb = gzip.compress(b"\0" * 2_000_000)
    assert len(bomb) < 10_000
    with pytest.raises(DataError, match="unpacks to more than 1000000 bytes"):
        gunzip_bounded(bomb, "bomb.gz", limit=1_000_000)
    assert gunzip_bounded(bomb, "bomb.gz", limit=2_000_000) == b"\0" * 2_000_000
    with pytest.raises(DataError, match="corrupt gzip"):
        gunzip_bounded(bomb[:-20], "cut.gz")


def test_tar_member_checks():
    payload = b"% asym\n1 2 1 0\n"
    good = _tar([tarfile.TarInfo("chess/out.chess")], {"chess/out.chess": payload})
    assert tar_member(good, "chess/out.chess", "a.tar.bz2") == payload
    link = tarfile.TarInfo("chess/out.chess")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(DataError, match="is a link or not a regular file"):
        tar_member(_tar([link], {}), "chess/out.chess", "a.tar.bz2")
    traversal = _tar([tarfile.TarInfo("../evil"), tarfile.TarInfo("chess/out.chess")],
                     {"../evil": b"x", "chess/out.chess": payload})  # fmt: skip
    with pytest.raises(DataError, match="points outside the archive"):
        tar_member(traversal, "chess/out.chess", "a.tar.bz2")
    with pytest.raises(DataError, match="more than 5"):
        tar_member(good, "chess/out.chess", "a.tar.bz2", limit=5)
    with pytest.raises(DataError, match="no file chess/none"):
        tar_member(good, "chess/none", "a.tar.bz2")
    with pytest.raises(DataError, match="not a readable tar archive"):
        tar_member(b"not an archive", "x", "a.tar.bz2")


# ---------------------------------------------------------------- the datasets' table and download path
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_published_digests_match_the_reference_copies(name):
    spec = DATASETS[name]
    assert spec.url.startswith("https://") and len(spec.sha256) == 64
    root = resolve_data_root(None)
    if root is None or not (root / "graphs" / name / spec.filename).is_file():
        pytest.skip("the shared data folder is not here")
    verify_file(root / "graphs" / name / spec.filename, spec.sha256)


def test_dataset_download_into_cache_then_cached_copy_is_verified(tmp_path, monkeypatch, serve):
    payload = b"1 2 0\n2 3 190080\n3 1 190081\n"
    spec = dataclasses.replace(DATASETS["uci_messages"], sha256=_sha(payload))
    monkeypatch.setitem(datasets.DATASETS, "uci_messages", spec)
    serve({spec.url: gzip.compress(payload)})
    empty_root, cache = tmp_path / "data", tmp_path / "cache"
    empty_root.mkdir()
    with pytest.raises(DataError, match="uci_messages not found"):
        load_dataset("uci_messages", data_dir=empty_root, cache_dir=cache, download=False)
    g = load_dataset("uci_messages", data_dir=empty_root, cache_dir=cache)
    assert g.num_nodes == 3 and g.num_snapshots == 2 and g.num_edges == 3
    cached = cache / "uci_messages" / "CollegeMsg.txt.gz"
    cached.write_bytes(gzip.compress(payload + b"4 1 9\n"))  # damaged or replaced in the cache
    with pytest.raises(DataError, match="CollegeMsg.txt.gz: sha256 .* delete it"):
        load_dataset("uci_messages", data_dir=empty_root, cache_dir=cache)


def test_dataset_download_extracts_konect_member(tmp_path, monkeypatch, serve):
    payload = b"% asym multisigned\n1 2 1\t0\n2 3 -1\t2628000\n"
    spec = dataclasses.replace(DATASETS["chess"], sha256=_sha(payload))
    monkeypatch.setitem(datasets.DATASETS, "chess", spec)
    serve({spec.url: _tar([tarfile.TarInfo("chess/out.chess")], {"chess/out.chess": payload})})
    (tmp_path / "data").mkdir()
    assert dataset_file("chess", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache").read_bytes() == payload
    g = load_dataset("chess", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert g.num_snapshots == 2 and [lb.tolist() for lb in g.edge_labels] == [[1], [-1]]


def test_dataset_with_a_changed_source_is_refused_in_one_line(tmp_path, serve):
    serve({DATASETS["bitcoin_otc"].url: gzip.compress(b"1,2,3,4\n")})  # not the published file
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match="could not download bitcoin_otc: .*sha256") as info:
        load_dataset("bitcoin_otc", data_dir=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert "\n" not in str(info.value) and _leftovers(tmp_path / "cache") == ["bitcoin_otc"]


@pytest.mark.parametrize("endpoint", ["http://mirror.example.org", "file:///srv/hub"])
def test_tokenizer_download_refuses_a_non_https_endpoint(endpoint, monkeypatch):
    from lit_efficiency.power_bert.glue import GLUEDataModule

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    data = GLUEDataModule(task="rte", tokenizer_name="tiny-random-bert", source="download")
    with pytest.raises(ConfigError, match="HF_ENDPOINT: only https:// downloads are allowed"):
        data.prepare_data()
