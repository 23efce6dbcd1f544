"""GLUE and IMDB downloads: the official archives, kept only with their published size and sha256, unpacked safely.

No network: :func:`lit_efficiency.core.downloads.urlopen` is replaced by a server of in-memory files, and the
published-digest table entry of the task under test is pointed at the local bytes (the real digests cannot be
reproduced offline); everything else (size and digest check, bounded unpacking, the folder rename, the readers) is the
real code.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import urllib.error
import zipfile
from pathlib import Path

import pytest

from lit_efficiency.core import downloads
from lit_efficiency.core.downloads import archive_files
from lit_efficiency.core.errors import DataError
from lit_efficiency.power_bert import glue_sources
from lit_efficiency.power_bert.glue import GLUEDataModule, read_glue_split
from lit_efficiency.power_bert.glue_sources import GLUE_ARCHIVES, IMDB_ARCHIVE, MRPC_FILES, Published, mrpc_tsvs
from lit_efficiency.power_bert.tasks_table import GLUE_TASKS, TASK_INFO

RTE_HEADER = "index\tsentence1\tsentence2\tlabel"


@pytest.fixture
def serve(monkeypatch, tmp_path):
    """``serve({url: bytes})``: what the opener answers; also points the download cache into ``tmp_path``."""
    files: dict[str, bytes] = {}
    monkeypatch.setenv("LIT_EFFICIENCY_CACHE", str(tmp_path / "cache"))

    def opener(url: str, timeout: float):
        if url not in files:
            raise urllib.error.URLError("HTTP Error 404: Not Found")
        return io.BytesIO(files[url])

    monkeypatch.setattr(downloads, "urlopen", opener)
    return files.update


def _published(url: str, data: bytes) -> Published:
    return Published(url, len(data), hashlib.sha256(data).hexdigest())


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _rte_zip() -> bytes:
    rows = [RTE_HEADER, "0\tA cat sat.\tA cat.\tentailment", "1\tA dog ran.\tA cat.\tnot_entailment"]
    tsv = ("\n".join(rows) + "\n").encode()
    test = b"index\tsentence1\tsentence2\n0\tx\ty\n"
    return _zip({"RTE/train.tsv": tsv, "RTE/dev.tsv": tsv, "RTE/test.tsv": test, "__MACOSX/RTE/._train.tsv": b"\0",
                 "RTE/original/notes.tsv": b"skip"})  # fmt: skip


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_published_table_covers_every_task():
    folders = {TASK_INFO[t].folder for t in GLUE_TASKS}
    assert folders == set(GLUE_ARCHIVES) | {"MRPC"}
    for spec in [*GLUE_ARCHIVES.values(), *MRPC_FILES.values(), IMDB_ARCHIVE]:
        assert spec.url.startswith("https://") and re.fullmatch(r"[0-9a-f]{64}", spec.sha256) and spec.size > 0


def test_glue_archive_accepted_when_it_is_the_published_file(tmp_path, serve, monkeypatch):
    data = _rte_zip()
    monkeypatch.setitem(GLUE_ARCHIVES, "RTE", _published(GLUE_ARCHIVES["RTE"].url, data))
    serve({GLUE_ARCHIVES["RTE"].url: data})
    (tmp_path / "data").mkdir()
    dm = GLUEDataModule(task="rte", tokenizer_name="tiny-random-bert", data_dir=str(tmp_path / "data"))
    columns = dm._read_raw("train")
    assert columns["text_a"] == ["A cat sat.", "A dog ran."] and columns["label"] == [0, 1]
    assert _tree(tmp_path / "cache") == ["glue", "glue/RTE", "glue/RTE/dev.tsv", "glue/RTE/test.tsv",
                                         "glue/RTE/train.tsv"]  # fmt: skip
    serve({GLUE_ARCHIVES["RTE"].url: b"changed"})  # the unpacked folder is used as is from now on
    assert dm._read_raw("dev")["label"] == [0, 1]


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "extra byte"])
def test_glue_archive_that_differs_is_refused_in_one_line_and_leaves_nothing(tmp_path, serve, monkeypatch, damage):
    good = _rte_zip()
    bad = {"flipped byte": _flip(good, len(good) // 2), "truncated": good[:-1], "extra byte": good + b"\0"}[damage]
    monkeypatch.setitem(GLUE_ARCHIVES, "RTE", _published(GLUE_ARCHIVES["RTE"].url, good))
    serve({GLUE_ARCHIVES["RTE"].url: bad})
    (tmp_path / "data").mkdir()
    (tmp_path / "cache" / "glue").mkdir(parents=True)
    (tmp_path / "cache" / "glue" / "keep.txt").write_text("keep")
    dm = GLUEDataModule(task="rte", tokenizer_name="tiny-random-bert", data_dir=str(tmp_path / "data"))
    with pytest.raises(DataError) as info:
        dm._read_raw("train")
    message = str(info.value)
    assert "\n" not in message and message.startswith("rte: no local copy and the download failed: ")
    assert re.search("sha256 .* differs from the published|bytes, the published file has|more than", message)
    assert _tree(tmp_path / "cache") == ["glue", "glue/keep.txt"]  # no archive, no partial folder
    assert (tmp_path / "cache" / "glue" / "keep.txt").read_text() == "keep"


def test_archive_without_the_task_folder_leaves_nothing(tmp_path, serve, monkeypatch):
    data = _zip({"RTE-v2/train.tsv": b"index\tsentence1\tsentence2\tlabel\n"})  # another layout than RTE/
    monkeypatch.setitem(GLUE_ARCHIVES, "RTE", _published(GLUE_ARCHIVES["RTE"].url, data))
    serve({GLUE_ARCHIVES["RTE"].url: data})
    dm = GLUEDataModule(task="rte", tokenizer_name="tiny-random-bert", source="download")
    with pytest.raises(DataError, match="RTE.zip: the archive holds none of the files expected for RTE"):
        dm._read_raw("train")
    assert _tree(tmp_path / "cache") == ["glue"]


def test_offline_download_failure_names_the_fix(tmp_path, serve):
    (tmp_path / "data").mkdir()
    dm = GLUEDataModule(task="wnli", tokenizer_name="tiny-random-bert", data_dir=str(tmp_path / "data"))
    with pytest.raises(DataError, match=r"WNLI.zip: download failed .*404.*pass a local copy") as info:
        dm._read_raw("dev")
    assert "\n" not in str(info.value) and _tree(tmp_path / "cache") == ["glue"]


def test_archive_members_are_checked_before_anything_is_written():
    def keep(name: str) -> str | None:
        return name

    with pytest.raises(DataError, match="points outside the archive"):
        archive_files(_zip({"RTE/train.tsv": b"a", "../evil.tsv": b"x"}), "a.zip", keep)
    link = zipfile.ZipInfo("RTE/train.tsv")
    link.external_attr = 0o120777 << 16  # a symlink entry
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(DataError, match="is a link or not a regular file"):
        archive_files(buffer.getvalue(), "a.zip", keep)
    with pytest.raises(DataError, match="not a readable zip or tar archive"):
        archive_files(b"neither", "a.zip", keep)


def test_archive_unpacking_is_bounded(monkeypatch):
    monkeypatch.setattr(downloads, "MAX_UNPACKED_BYTES", 1000)
    bomb = _zip({"RTE/train.tsv": b"\0" * 600, "RTE/dev.tsv": b"\0" * 600})
    with pytest.raises(DataError, match="unpacks to more than 1000 bytes"):
        archive_files(bomb, "a.zip", lambda name: name)


def _imdb_tgz() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in [("aclImdb/train/pos/0_9.txt", b"great"), ("aclImdb/train/neg/1_2.txt", b"bad"),
                           ("aclImdb/test/pos/0_8.txt", b"fine"), ("aclImdb/test/neg/1_1.txt", b"awful"),
                           ("aclImdb/train/unsup/2_0.txt", b"skip"), ("aclImdb/imdb.vocab", b"skip")]:  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(text)
            archive.addfile(info, io.BytesIO(text))
    return buffer.getvalue()


def test_imdb_archive_verified_then_unpacked(tmp_path, serve, monkeypatch):
    data = _imdb_tgz()
    monkeypatch.setattr(glue_sources, "IMDB_ARCHIVE", _published(IMDB_ARCHIVE.url, data))
    serve({IMDB_ARCHIVE.url: _flip(data, 40)})
    (tmp_path / "data").mkdir()
    dm = GLUEDataModule(task="imdb", tokenizer_name="tiny-random-bert", data_dir=str(tmp_path / "data"))
    with pytest.raises(DataError, match="aclImdb_v1.tar.gz: sha256 .* differs from the published") as info:
        dm._read_raw("test")
    assert "\n" not in str(info.value) and _tree(tmp_path / "cache") == []
    serve({IMDB_ARCHIVE.url: data})
    assert dm._read_raw("test") == {"text_a": ["awful", "fine"], "label": [0, 1], "idx": [0, 1]}
    assert _tree(tmp_path / "cache" / "aclImdb") == ["test", "test/neg", "test/neg/1_1.txt", "test/pos",
                                                     "test/pos/0_8.txt", "train", "train/neg", "train/neg/1_2.txt",
                                                     "train/pos", "train/pos/0_9.txt"]  # fmt: skip


def test_mrpc_built_from_the_microsoft_files_like_download_glue_data(tmp_path):
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    train = f"{header}\n1\t11\t12\tA a.\tA b.\n0\t21\t22\tB a.\tB b.\n1\t31\t32\tC a.\tC b.\n".encode()
    test = f"{header}\n1\t41\t42\tD a.\tD b.\n".encode()
    dev_ids = b"21\t22\n"
    files = mrpc_tsvs(train, test, dev_ids)
    for name, data in files.items():
        (tmp_path / "MRPC").mkdir(exist_ok=True)
        (tmp_path / "MRPC" / name).write_bytes(data)
    assert read_glue_split("mrpc", "train", tmp_path) == {"text_a": ["A a.", "C a."], "text_b": ["A b.", "C b."],
                                                          "label": [1, 1]}  # fmt: skip
    assert read_glue_split("mrpc", "dev", tmp_path) == {"text_a": ["B a."], "text_b": ["B b."], "label": [0]}
    assert files["test.tsv"] == b"index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t41\t42\tD a.\tD b.\n"
    with pytest.raises(DataError, match=r"msr_paraphrase_train.txt:3: expected 5 tab-separated columns"):
        mrpc_tsvs(f"{header}\n1\t11\t12\tA a.\tA b.\n0\t21\n".encode(), test, dev_ids)
