"""Download the image-folder benchmarks: several mirrors, resumable, verified, extracted into the documented layout.

``da data download office31 [--root DIR]`` or ``--data.options '{download: true}'`` on a run fetches the archives of
the first mirror that works into ``<root>/.downloads/<dataset>/<mirror>/``, resuming a partial file with an HTTP
``Range`` request, checks each against its recorded MD5 / SHA-256 (or, where no checksum is published, its size;
where neither is known, the archive's own integrity: every zip member's CRC, a complete tar stream), extracts it and
moves the domain folders to ``<root>/<dataset>/<domain>/<class>/<image>`` (docs/data.md). A checksum mismatch or a
dead link moves on to the next mirror; when all fail, :class:`~da.errors.UserError` names every mirror tried, what
went wrong with each, and where to get the data by hand.

Where the URLs and checksums come from (looked up in the peers' code; the md5 values are the ones those projects
verify against):

* Office-31 -- pytorch-adapt (``pytorch_adapt/datasets/office31.py``): ``office31.tar.gz`` on cornell.box.com, md5
  89818e596f3cdda1d56da0f077435faa. TLlib (``tllib/vision/datasets/office31.py``): one ``<domain>.tgz`` per domain on
  cloud.tsinghua.edu.cn, no checksum published, size not recorded.
* Office-Home -- DomainBed (``domainbed/scripts/download.py``): ``OfficeHomeDataset_10072016.zip`` on Google Drive
  (id 1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC), md5 b1c14819770c4448fd5b6d931031c91c (the md5 a DomainBed-format loader
  and a torchvision-style loader both check for this file). TLlib: ``<Domain>.tgz`` on cloud.tsinghua.edu.cn, no checksum.
* PACS -- DomainBed: ``PACS.zip`` on Google Drive (id 1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd), md5
  fd5db817f7cdafeef3bfd525aaf9b42e (checked by a DomainBed-format loader); the archive holds ``kfold/<domain>``.
  TLlib: ``<domain>.tgz`` on cloud.tsinghua.edu.cn, no checksum.
* VisDA-2017 classification -- the organisers' server (TLlib, the taskcv-2017 README): ``train.tar``,
  ``validation.tar`` at csr.bu.edu/ftp/visda17/clf; no checksum published; ``train.tar`` is 7,698,031,104 bytes
  (a public notebook's record of the server's Content-Length). TLlib's cloud.tsinghua.edu.cn copies: no checksum.
* DomainNet (cleaned) -- DomainBed and TLlib use the same six zips at csr.bu.edu/ftp/visda/2019/multi-source
  (``groundtruth/`` for clipart and painting); one public source, no checksum or size published.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from da.data.roots import resolve_root
from da.errors import UserError, unknown_name

CHUNK = 1 << 20
GDRIVE = "https://drive.usercontent.google.com/download?export=download&confirm=t&id="
TSINGHUA = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"
BU = "http://csr.bu.edu/ftp"


@dataclass(frozen=True)
class Archive:
    """One file to fetch: where, its name on disk, and what it must hash to (``None``: not published)."""

    url: str
    filename: str
    md5: Optional[str] = None
    sha256: Optional[str] = None
    size: Optional[int] = None


@dataclass(frozen=True)
class Mirror:
    """A complete copy of a dataset: one or more archives whose extracted content holds every domain folder."""

    name: str
    archives: Tuple[Archive, ...]


def _tsinghua(name: str, files: Sequence[Tuple[str, str]]) -> Mirror:
    return Mirror(name, tuple(Archive(TSINGHUA.format(key), filename) for filename, key in files))


#: dataset -> its mirrors, tried in order (sources in the module docstring)
MIRRORS: Dict[str, List[Mirror]] = {
    "office31": [
        Mirror("pytorch-adapt (cornell.box.com)", (Archive(
            "https://cornell.box.com/shared/static/3v2ftdkdhpz1lbbr4uhu0135w7m79p7q", "office31.tar.gz",
            md5="89818e596f3cdda1d56da0f077435faa"),)),
        _tsinghua("TLlib (cloud.tsinghua.edu.cn)", [("amazon.tgz", "ec12dfcddade43ab8101"),
                                                   ("dslr.tgz", "a41d818ae2f34da7bb32"),
                                                   ("webcam.tgz", "8a41009a166e4131adcd")]),
    ],
    "officehome": [
        Mirror("DomainBed (Google Drive)", (Archive(GDRIVE + "1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC",
                                                    "OfficeHomeDataset_10072016.zip",
                                                    md5="b1c14819770c4448fd5b6d931031c91c"),)),
        _tsinghua("TLlib (cloud.tsinghua.edu.cn)", [("Art.tgz", "4691878067d04755beab"),
                                                   ("Clipart.tgz", "0d41e7da4558408ea5aa"),
                                                   ("Product.tgz", "76186deacd7c4fa0a679"),
                                                   ("Real_World.tgz", "dee961894cc64b1da1d7")]),
    ],
    "pacs": [
        Mirror("DomainBed (Google Drive)", (Archive(GDRIVE + "1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd", "PACS.zip",
                                                    md5="fd5db817f7cdafeef3bfd525aaf9b42e"),)),
        _tsinghua("TLlib (cloud.tsinghua.edu.cn)", [("art_painting.tgz", "4eb7db4f3eec41719856"),
                                                   ("cartoon.tgz", "d847ac22497b4826889f"),
                                                   ("photo.tgz", "458ad21483da4a45935b"),
                                                   ("sketch.tgz", "c892ac2d94a44b1196b8")]),
    ],
    "visda": [
        Mirror("VisDA organisers (csr.bu.edu)", (
            Archive(f"{BU}/visda17/clf/train.tar", "train.tar", size=7_698_031_104),
            Archive(f"{BU}/visda17/clf/validation.tar", "validation.tar"))),
        _tsinghua("TLlib (cloud.tsinghua.edu.cn)", [("train.tar", "c5f3ce59139144ec8221"),
                                                   ("validation.tar", "da70e4b1cf514ecea562")]),
    ],
    "domainnet": [
        Mirror("DomainNet authors (csr.bu.edu)", tuple(
            Archive(f"{BU}/visda/2019/multi-source/{sub}{d}.zip", f"{d}.zip")
            for sub, d in (("groundtruth/", "clipart"), ("", "infograph"), ("groundtruth/", "painting"),
                           ("", "quickdraw"), ("", "real"), ("", "sketch")))),
    ],
}


class DownloadError(RuntimeError):
    """One archive of one mirror failed (network, HTTP status, checksum, size, broken archive)."""


# --------------------------------------------------------------------------------------------------- fetching
def _hashes(path: Path) -> Dict[str, str]:
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            md5.update(block)
            sha.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def verify(path: Path, archive: Archive) -> None:
    """Raise :class:`DownloadError` unless ``path`` has the archive's recorded size and checksums."""
    size = path.stat().st_size
    if archive.size is not None and size != archive.size:
        raise DownloadError(f"size {size} bytes, expected {archive.size}")
    if archive.md5 or archive.sha256:
        got = _hashes(path)
        for kind in ("md5", "sha256"):
            want = getattr(archive, kind)
            if want and got[kind] != want.lower():
                raise DownloadError(f"{kind} {got[kind]} does not match the recorded {want}")


def fetch(url: str, dest: Path, retries: int = 3, timeout: float = 60.0, quiet: bool = False) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` with ``Range: bytes=<have>-`` (after an interrupted run or
    a connection that closed early); a server that ignores the range (200) restarts the file. Returns ``dest``."""
    from da.progress import Ticker

    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    last_error = "no attempt"
    for _ in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "da-downloader",
                                                       **({"Range": f"bytes={have}-"} if have else {})})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status = response.status
                if status == 416:  # the part file is already the whole file
                    break
                if have and status != 206:
                    have = 0  # range ignored: start over
                length = response.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                ticker = None if quiet else Ticker(total or 0, desc=dest.name, unit="MB", start=have / 1e6,
                                                   every_s=10.0)
                with open(part, "ab" if have else "wb") as f:
                    got = have
                    while True:
                        try:
                            block = response.read(CHUNK)
                        except (OSError, ValueError) as err:  # http.client.IncompleteRead and resets
                            last_error = f"connection lost after {got} bytes ({type(err).__name__})"
                            break
                        if not block:
                            break
                        f.write(block)
                        got += len(block)
                        if ticker is not None:
                            ticker.total = (total or 0) / 1e6
                            ticker.update(got / 1e6)
                if ticker is not None:
                    ticker.close()
                if total is None or got >= total:
                    break
                last_error = f"connection closed after {got} of {total} bytes"
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:
                break
            raise DownloadError(f"HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, OSError) as err:
            last_error = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
        time.sleep(0.2)
    else:
        raise DownloadError(f"incomplete after {retries + 1} attempts: {last_error}")
    part.replace(dest)
    return dest


# --------------------------------------------------------------------------------------------------- extracting
def extract(path: Path, into: Path) -> None:
    """Unpack a ``.zip`` / ``.tar`` / ``.tar.gz`` / ``.tgz`` into ``into``, refusing members outside it; a broken
    archive raises :class:`DownloadError`."""
    into.mkdir(parents=True, exist_ok=True)
    root = into.resolve()
    try:
        if path.name.endswith(".zip"):
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
                if bad is not None:
                    raise DownloadError(f"zip member {bad} fails its CRC check")
                for name in z.namelist():
                    if not (root / name).resolve().is_relative_to(root):
                        raise DownloadError(f"zip member {name} points outside the target folder")
                z.extractall(root)
        else:
            with tarfile.open(path) as t:
                t.extractall(root, filter="data")  # no absolute paths, links out or device files
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        raise DownloadError(f"cannot extract {path.name}: {type(err).__name__}: {err}") from None


def _norm(name: str) -> str:
    return name.lower().replace(" ", "_")


def _domain_parent(folder: Path, domains: Sequence[str], depth: int = 4) -> Optional[Path]:
    """The folder (``folder`` itself or one below it, breadth first) whose sub-folders include every domain
    (compared lower-case, spaces as underscores: ``Real World`` is ``Real_World``)."""
    want = {_norm(d) for d in domains}
    level = [folder]
    for _ in range(depth + 1):
        nxt = []
        for d in level:
            subs = [p for p in d.iterdir() if p.is_dir()]
            if want <= {_norm(p.name) for p in subs}:
                return d
            nxt += subs
        level = nxt
    return None


def _settle(extracted: Path, target: Path, domains: Sequence[str]) -> None:
    parent = _domain_parent(extracted, domains)
    if parent is None:
        found = sorted(p.name for p in extracted.iterdir())
        raise DownloadError(f"the archives hold no folder with all domains {', '.join(domains)} (top level: {found})")
    target.mkdir(parents=True, exist_ok=True)
    for child in parent.iterdir():
        dest = target / child.name
        if dest.exists():
            shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
        shutil.move(str(child), str(dest))


# --------------------------------------------------------------------------------------------------- datasets
def _layout(name: str):
    from da.data.readers.folders import FOLDER_DATASETS

    if name not in MIRRORS:
        raise UserError(str(unknown_name("downloadable dataset", name, MIRRORS)))
    domains, candidates, how = FOLDER_DATASETS[name]
    return domains, candidates[0], how


def is_present(name: str, root: Optional[str] = None) -> bool:
    """Whether every domain folder of ``name`` is where the loader looks for it."""
    from da.data.readers.folders import _find_dataset_folder, _find_domain_folder

    domains, _, _ = _layout(name)
    try:
        base = _find_dataset_folder(resolve_root(root), name)
        for d in domains:
            _find_domain_folder(base, d, name)
    except FileNotFoundError:
        return False
    return True


def download_dataset(name: str, root: Optional[str] = None, mirrors: Optional[Sequence[Mirror]] = None,
                     retries: int = 3, timeout: float = 60.0, keep_archives: bool = False,
                     quiet: bool = False) -> Path:
    """Fetch, verify and extract dataset ``name`` into ``<root>/<name>`` (see the module docstring); returns that
    folder. Already present: nothing is downloaded."""
    domains, folder_name, how = _layout(name)
    base = resolve_root(root)
    target = base / folder_name
    if is_present(name, root):
        return target
    tried = []
    for mirror in (MIRRORS[name] if mirrors is None else mirrors):
        slug = "".join(c if c.isalnum() else "_" for c in mirror.name.split(" (")[0]).strip("_").lower()
        cache = base / ".downloads" / name / slug
        staging = base / ".downloads" / name / f"{slug}.extracted"
        try:
            if staging.exists():
                shutil.rmtree(staging)
            for archive in mirror.archives:
                path = cache / archive.filename
                if not path.exists():
                    if not quiet:
                        print(f"[da] {name}: {archive.filename} from {mirror.name}", flush=True)
                    fetch(archive.url, path, retries=retries, timeout=timeout, quiet=quiet)
                try:
                    verify(path, archive)
                except DownloadError:
                    path.unlink()  # a bad copy is never reused
                    raise
                extract(path, staging)
            _settle(staging, target, domains)
        except DownloadError as err:
            tried.append(f"{mirror.name}: {err} [{', '.join(a.url for a in mirror.archives)}]")
            continue
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        if not keep_archives:
            shutil.rmtree(cache, ignore_errors=True)
        if not quiet:
            print(f"[da] {name}: ready in {target}", flush=True)
        return target
    raise UserError(f"could not download dataset '{name}'; tried {len(tried)} mirror(s): " + "; ".join(tried)
                    + f". Get it by hand: {how}, unpacked to {target}/<domain>/<class>/<image>")


def data_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="da data", description="Datasets: download and check the image benchmarks.")
    sub = p.add_subparsers(dest="action", required=True)
    d = sub.add_parser("download", help="fetch, verify and extract a dataset into <root>/<dataset>/")
    d.add_argument("name", choices=sorted(MIRRORS))
    d.add_argument("--root", default=None, help="data root (default: $DA_DATA_ROOT or ./data)")
    d.add_argument("--keep-archives", action="store_true", help="keep the archives in <root>/.downloads")
    sub.add_parser("mirrors", help="list every dataset's mirrors and recorded checksums")
    return p


def data_main(argv: Optional[Sequence[str]] = None) -> int:
    """``da data download <name> [--root DIR]`` / ``da data mirrors``."""
    args = data_parser().parse_args(argv)
    if args.action == "mirrors":
        for name, mirrors in MIRRORS.items():
            for m in mirrors:
                for a in m.archives:
                    check = (f"md5 {a.md5}" if a.md5 else f"sha256 {a.sha256}" if a.sha256
                             else f"{a.size} bytes, no checksum published" if a.size else "no checksum published")
                    print(f"{name:<11} {m.name:<32} {a.filename:<32} {check}  {a.url}")
        return 0
    download_dataset(args.name, args.root, keep_archives=args.keep_archives)
    return 0
