"""The official GLUE and IMDB files, downloaded only when their published sha256 matches.

Used by :class:`~lit_efficiency.power_bert.glue.GLUEDataModule` when there is no local copy: each task's archive
(MRPC: its three source files) is fetched over https through :mod:`lit_efficiency.core.downloads` (size and sha256
checked against the published values before anything is unpacked, bounded unpacking, the task folder created in one
rename) and unpacked into the layout of ``download_glue_data.py`` (``<root>/glue/<Folder>/*.tsv``) or ``aclImdb/``,
which the local readers then read.

Where the digests come from (two independent publications, which agree wherever both list a file):

* GLUE: the HF ``datasets`` library's ``datasets/glue/dataset_infos.json`` (``download_checksums``: url,
  ``num_bytes``, sha256 ``checksum``) for the ``dl.fbaipublicfiles.com/glue/data`` URLs used here;
  tensorflow_datasets ``tensorflow_datasets/url_checksums/glue.txt`` lists the same size and sha256 for CoLA, SST-2,
  STS-B, MNLI, QNLIv2, RTE, WNLI and the three MRPC files (under their older firebasestorage URLs); QQP-clean.zip
  is listed by HF only (tensorflow_datasets lists the older QQP.zip). A third publication, Transformers.jl's
  ``DataDeps`` registrations (``GLUE-QQP``, ``GLUE-QNLI``), gives the same sha256 for QQP-clean.zip and QNLIv2.zip
  and unpacks them into ``QQP/`` and ``QNLI/``, the folder names expected here.
* IMDB: tensorflow_datasets ``tensorflow_datasets/url_checksums/imdb_reviews.txt`` (size 84125825 and the sha256
  below for ``aclImdb_v1.tar.gz``).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from lit_efficiency.core.downloads import download_verified, fetch_tree, write_tree
from lit_efficiency.core.errors import DataError

_GLUE = "https://dl.fbaipublicfiles.com/glue/data/"


@dataclass(frozen=True)
class Published:
    """One downloadable file with its published size and sha256."""

    url: str
    size: int
    sha256: str


#: GLUE folder -> its archive (digests: HF datasets ``glue/dataset_infos.json``; see the module docstring).
GLUE_ARCHIVES: dict[str, Published] = {
    "CoLA": Published(_GLUE + "CoLA.zip", 376971, "f212fcd832b8f7b435fb991f101abf89f96b933ab400603bf198960dfc32cbff"),
    "SST-2": Published(
        _GLUE + "SST-2.zip", 7439277, "d67e16fb55739c1b32cdce9877596db1c127dc322d93c082281f64057c16deaa"
    ),
    "QQP": Published(
        _GLUE + "QQP-clean.zip", 41696084, "40e7c862c04eb26ee04b67fd900e76c45c6ba8e6d8fab4f8f1f8072a1a3fbae0"
    ),
    "STS-B": Published(_GLUE + "STS-B.zip", 802872, "e60a6393de5a8b5b9bac5020a1554b54e3691f9d600b775bd131e613ac179c85"),
    "MNLI": Published(
        _GLUE + "MNLI.zip", 312783507, "e7c1d896d26ed6caf700110645df426cc2d8ebf02a5ab743d5a5c68ac1c83633"
    ),
    "QNLI": Published(
        _GLUE + "QNLIv2.zip", 10627589, "e634e78627a29adaecd4f955359b22bf5e70f2cbd93b493f2d624138a0c0e5f5"
    ),
    "RTE": Published(_GLUE + "RTE.zip", 697150, "6bf86de103ecd335f3441bd43574d23fef87ecc695977a63b82d5efb206556ee"),
    "WNLI": Published(_GLUE + "WNLI.zip", 28999, "ae0e8e4d16f4d46d4a0a566ec7ecceccfd3fbfaa4a7a4b4e02848c0f2561ac46"),
}

#: MRPC has no GLUE archive: ``download_glue_data.py`` builds it from these (same digest sources as above).
MRPC_FILES: dict[str, Published] = {
    "train": Published(
        "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_train.txt",
        1047044,
        "60a9b09084528f0673eedee2b69cb941920f0b8cd0eeccefc464a98768457f89",
    ),
    "test": Published(
        "https://dl.fbaipublicfiles.com/senteval/senteval_data/msr_paraphrase_test.txt",
        441275,
        "a04e271090879aaba6423d65b94950c089298587d9c084bf9cd7439bd785f784",
    ),
    "dev_ids": Published(
        _GLUE + "mrpc_dev_ids.tsv", 6222, "971d7767d81b997fd9060ade0ec23c4fc31cbb226a55d1bd4a1bac474eb81dc7"
    ),
}

#: The IMDB archive (digest: tensorflow_datasets ``url_checksums/imdb_reviews.txt``).
IMDB_ARCHIVE = Published(
    "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
    84125825,
    "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",
)


def fetch_glue_folder(folder: str, glue_root: Path) -> Path:
    """Create ``glue_root/folder`` (``CoLA``, ``SST-2``, ...) from the official, verified download.

    Only the folder's top-level ``*.tsv`` files are kept (not ``__MACOSX/`` or STS-B's ``original/``).

    Raises:
        ConfigError: the folder exists already.
        DataError: the download failed or is not the published file, or the archive is unsafe or too large.
    """
    if folder == "MRPC":
        return _fetch_mrpc(glue_root / folder)
    spec = GLUE_ARCHIVES[folder]

    def select(name: str) -> str | None:
        path = PurePosixPath(name)
        return path.name if path.parent == PurePosixPath(folder) and path.suffix == ".tsv" else None

    return fetch_tree(spec.url, glue_root / folder, spec.sha256, spec.size, select)


def fetch_imdb(root: Path) -> Path:
    """Create ``root/aclImdb`` with the labelled reviews (``{train,test}/{pos,neg}/*.txt``) of the verified archive.

    Raises:
        ConfigError: the folder exists already.
        DataError: the download failed or is not the published file, or the archive is unsafe or too large.
    """

    def select(name: str) -> str | None:
        parts = PurePosixPath(name).parts
        labelled = len(parts) == 4 and parts[0] == "aclImdb" and parts[1] in ("train", "test")
        return "/".join(parts[1:]) if labelled and parts[2] in ("pos", "neg") and name.endswith(".txt") else None

    return fetch_tree(IMDB_ARCHIVE.url, root / "aclImdb", IMDB_ARCHIVE.sha256, IMDB_ARCHIVE.size, select)


def _fetch_mrpc(folder: Path) -> Path:
    raw = {key: download_verified(s.url, folder.parent, s.sha256, s.size) for key, s in MRPC_FILES.items()}
    return write_tree(folder, mrpc_tsvs(raw["train"], raw["test"], raw["dev_ids"]))


def _rows(data: bytes, where: str) -> list[list[str]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{where}: not UTF-8 ({err})") from None
    return list(csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))


def _tsv(rows: list[list[str]]) -> bytes:
    return "".join("\t".join(row) + "\n" for row in rows).encode("utf-8")


def mrpc_tsvs(train: bytes, test: bytes, dev_ids: bytes) -> dict[str, bytes]:
    """GLUE's MRPC ``train.tsv``, ``dev.tsv`` and ``test.tsv`` from the Microsoft source files.

    As ``download_glue_data.py`` does: the pairs of ``msr_paraphrase_train.txt`` listed in ``mrpc_dev_ids.tsv`` form
    the dev split, the others the train split (both keep the source header and columns ``Quality, #1 ID, #2 ID,
    #1 String, #2 String``); the test split is ``msr_paraphrase_test.txt`` with the label replaced by a row index.

    Raises:
        DataError: a source file that is not UTF-8 or has a row without five columns.
    """
    ids = {tuple(row[:2]) for row in _rows(dev_ids, MRPC_FILES["dev_ids"].url) if len(row) >= 2}
    header, *pairs = _rows(train, MRPC_FILES["train"].url)
    test_header, *tests = _rows(test, MRPC_FILES["test"].url)
    for where, rows in ((MRPC_FILES["train"].url, pairs), (MRPC_FILES["test"].url, tests)):
        bad = next((i for i, row in enumerate(rows, start=2) if len(row) != 5), None)
        if bad is not None:
            raise DataError(f"{where}:{bad}: expected 5 tab-separated columns")
    dev = [row for row in pairs if tuple(row[1:3]) in ids]
    train_rows = [row for row in pairs if tuple(row[1:3]) not in ids]
    test_rows = [[str(i), *row[1:]] for i, row in enumerate(tests)]
    return {
        "train.tsv": _tsv([header, *train_rows]),
        "dev.tsv": _tsv([header, *dev]),
        "test.tsv": _tsv([["index", *test_header[1:]], *test_rows]),
    }
