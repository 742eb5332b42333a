"""The adapter cache: one directory per revision, downloaded once, verified, evicted by size.

Layout under the cache root::

    v1/<revision>/adapter/...        the files of the version (what vLLM loads: ``lora_path``)
    v1/<revision>/manifest.json      written last, inside the temp dir; its mtime is the recency
    tmp/<revision>.<pid>.<rand>/     a download in progress (renamed into v1/ when complete)
    locks/<revision>.lock            fcntl lock: one download of a revision across processes

A revision names immutable content, so a complete directory never needs to be downloaded again:
after a restart it is a hit once its files are seen with the sizes the manifest records. A
directory appears in ``v1/`` only by ``os.rename`` of a fully downloaded and sha256-verified temp
directory, so readers never see a partial one. Eviction renames a directory out of ``v1/`` first
(under the same lock), then deletes it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List, Optional

log = logging.getLogger("quiver_vllm")

_REVISION = re.compile(r"[0-9a-f]{40}\Z")
# A version's file path as Quiver stores it: relative, '/'-separated, no '.' or '..' parts.
_PART = re.compile(r"[A-Za-z0-9._+=-][A-Za-z0-9 ._+=@,-]{0,254}\Z")
MANIFEST = "manifest.json"
TOUCH_EVERY_S = 1.0


class IntegrityError(Exception):
    """A downloaded file does not match the size or sha256 the API lists."""


class UnsafePath(Exception):
    """A file path that could escape the cache directory."""


def check_file_path(path: str) -> str:
    if not isinstance(path, str) or not path or len(path) > 1024 or path.startswith("/"):
        raise UnsafePath(f"unsafe file path {path!r}")
    parts = path.split("/")
    for p in parts:
        if p in ("", ".", "..") or not _PART.match(p):
            raise UnsafePath(f"unsafe file path {path!r}")
    return path


def _files_key(files: List[dict]) -> List[tuple]:
    return sorted((f["path"], int(f["size"]), f["sha256"]) for f in files)


# Downloader(path, sink) streams one file of the revision into sink and returns its byte count.
Downloader = Callable[[str, Callable[[bytes], None]], int]


class AdapterCache:
    def __init__(self, root: str, max_bytes: int = 0):
        self.root = os.path.abspath(os.path.expanduser(root))
        self.max_bytes = max_bytes
        self.dir = os.path.join(self.root, "v1")
        self.tmp = os.path.join(self.root, "tmp")
        self.locks = os.path.join(self.root, "locks")
        for d in (self.dir, self.tmp, self.locks):
            os.makedirs(d, exist_ok=True)
        self._mu = threading.Lock()
        self._rev_locks: Dict[str, threading.Lock] = {}
        # revision -> (files key, last touch time) of directories seen complete by this process
        self._known: Dict[str, tuple] = {}
        self.downloads = 0  # revisions this instance downloaded (tests, logs)
        # A hit records its recency at most this often (seconds): keeps warm hits cheap.
        self.touch_every = TOUCH_EVERY_S
        self._clean_tmp()

    # -- paths and locks --------------------------------------------------------------------

    def entry(self, revision: str) -> str:
        if not _REVISION.match(revision):
            raise ValueError(f"not a revision: {revision!r}")
        return os.path.join(self.dir, revision)

    def adapter_dir(self, revision: str) -> str:
        return os.path.join(self.entry(revision), "adapter")

    def _thread_lock(self, revision: str) -> threading.Lock:
        with self._mu:
            lk = self._rev_locks.get(revision)
            if lk is None:
                lk = self._rev_locks[revision] = threading.Lock()
            return lk

    @contextmanager
    def _file_lock(self, revision: str, blocking: bool = True) -> Iterator[bool]:
        fd = os.open(os.path.join(self.locks, revision + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except OSError as e:
                if not blocking and e.errno in (errno.EAGAIN, errno.EACCES):
                    yield False
                    return
                raise
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # -- lookups ----------------------------------------------------------------------------

    def lookup(self, revision: str, files: List[dict]) -> Optional[str]:
        """The adapter directory if this revision is cached complete with these files, else None.

        Records the hit's recency (the manifest's mtime, at most once a second)."""
        key = _files_key(files)
        entry = self.entry(revision)
        known = self._known.get(revision)
        now = time.time()
        if known is not None and known[0] == key:
            # Seen complete by this process: re-verify it still exists (another process may have
            # evicted it) with one stat per file.
            if self._files_present(entry, key):
                if now - known[1] >= self.touch_every:
                    self._touch(entry)
                    self._known[revision] = (key, now)
                return os.path.join(entry, "adapter")
            self._known.pop(revision, None)
            return None
        try:
            with open(os.path.join(entry, MANIFEST)) as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            return None
        if _files_key(manifest.get("files", [])) != key or not self._files_present(entry, key):
            return None
        self._touch(entry)
        self._known[revision] = (key, now)
        return os.path.join(entry, "adapter")

    @staticmethod
    def _files_present(entry: str, key: List[tuple]) -> bool:
        for path, size, _ in key:
            try:
                if os.stat(os.path.join(entry, "adapter", path)).st_size != size:
                    return False
            except OSError:
                return False
        return True

    @staticmethod
    def _touch(entry: str) -> None:
        try:
            os.utime(os.path.join(entry, MANIFEST))
        except OSError:
            pass

    # -- downloads --------------------------------------------------------------------------

    def ensure(self, revision: str, files: List[dict], download: Downloader,
               meta: Optional[dict] = None) -> str:
        """Return the adapter directory of ``revision``, downloading it once if needed.

        Safe to call from many threads and processes at once: one downloads, the others wait for
        it and get the hit. Raises IntegrityError (nothing cached) when a file does not match."""
        hit = self.lookup(revision, files)
        if hit is not None:
            return hit
        for f in files:
            check_file_path(f["path"])
        with self._thread_lock(revision):
            hit = self.lookup(revision, files)
            if hit is not None:
                return hit
            with self._file_lock(revision):
                hit = self.lookup(revision, files)
                if hit is not None:
                    return hit
                path = self._download(revision, files, download, meta or {})
        self.evict(keep=revision)
        return path

    def _download(self, revision: str, files: List[dict], download: Downloader,
                  meta: dict) -> str:
        tmp = os.path.join(self.tmp, f"{revision}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        os.makedirs(os.path.join(tmp, "adapter"))
        started = time.monotonic()
        total = 0
        try:
            for f in files:
                dest = os.path.join(tmp, "adapter", f["path"])
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                h = hashlib.sha256()
                with open(dest, "wb") as out:
                    def sink(chunk: bytes, h=h, out=out) -> None:
                        h.update(chunk)
                        out.write(chunk)

                    n = download(f["path"], sink)
                if n != int(f["size"]):
                    raise IntegrityError(
                        f"{f['path']}: got {n} bytes, the API lists {f['size']}")
                got = h.hexdigest()
                if got != f["sha256"]:
                    raise IntegrityError(
                        f"{f['path']}: sha256 {got} does not match the API's {f['sha256']}")
                total += n
            manifest = dict(meta)
            manifest.update({"revision": revision, "files": files, "bytes": total})
            with open(os.path.join(tmp, MANIFEST), "w") as out:
                json.dump(manifest, out)
            final = self.entry(revision)
            if os.path.isdir(final):
                # Left by an earlier, different file list (cannot happen for one revision) or a
                # damaged copy: replace it.
                self._remove_entry(revision)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.downloads += 1
        self._known[revision] = (_files_key(files), time.time())
        log.info("quiver: downloaded revision %s (%d files, %d bytes) in %.2fs", revision,
                 len(files), total, time.monotonic() - started)
        return os.path.join(final, "adapter")

    # -- eviction ---------------------------------------------------------------------------

    def entries(self) -> List[tuple]:
        """(mtime, bytes, revision) of every complete entry, oldest first."""
        out = []
        for rev in os.listdir(self.dir):
            if not _REVISION.match(rev):
                continue
            m = os.path.join(self.dir, rev, MANIFEST)
            try:
                st = os.stat(m)
                with open(m) as f:
                    size = int(json.load(f).get("bytes", 0))
            except (OSError, ValueError):
                continue
            out.append((st.st_mtime, size, rev))
        out.sort()
        return out

    def total_bytes(self) -> int:
        return sum(e[1] for e in self.entries())

    def evict(self, keep: Optional[str] = None) -> List[str]:
        """Remove least recently used entries until the total fits ``max_bytes`` (0: no limit).

        ``keep`` (the revision just used) is never removed, nor an entry another process holds
        locked (being downloaded or checked)."""
        if not self.max_bytes:
            return []
        entries = self.entries()
        total = sum(e[1] for e in entries)
        removed = []
        for _, size, rev in entries:
            if total <= self.max_bytes:
                break
            if rev == keep:
                continue
            with self._file_lock(rev, blocking=False) as got:
                if not got:
                    continue
                self._remove_entry(rev)
            total -= size
            removed.append(rev)
            log.info("quiver: evicted revision %s (%d bytes) from the cache", rev, size)
        return removed

    def _remove_entry(self, revision: str) -> None:
        self._known.pop(revision, None)
        gone = os.path.join(self.tmp, f"evict-{revision}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.entry(revision), gone)
        except FileNotFoundError:
            return
        shutil.rmtree(gone, ignore_errors=True)

    def _clean_tmp(self) -> None:
        """Remove temp directories left by processes that are gone."""
        for n in os.listdir(self.tmp):
            parts = n.split(".")
            try:
                pid = int(parts[1])
            except (IndexError, ValueError):
                continue
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, 0)
                continue  # still running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            shutil.rmtree(os.path.join(self.tmp, n), ignore_errors=True)
