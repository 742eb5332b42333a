"""A small HTTP client for Quiver's native API (standard library only).

One keep-alive connection per thread; every socket operation has a timeout; downloads stream in
bounded chunks. A stale keep-alive connection (closed by the server while idle) is retried once
on a fresh connection: every request here is an idempotent GET.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.parse
from typing import Callable, Dict, Optional

CHUNK = 1 << 20
USER_AGENT = "quiver-vllm/0.1"


class HttpError(Exception):
    def __init__(self, status: int, body: bytes, url: str):
        self.status = status
        self.body = body[:500]
        self.url = url
        super().__init__(f"HTTP {status} from {url}: {self.body.decode('utf-8', 'replace')}")


class NotFound(HttpError):
    """404: the adapter, version or file does not exist, or the caller may not see it."""


def quote_path(p: str) -> str:
    return urllib.parse.quote(p, safe="/")


class Client:
    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 30.0):
        u = urllib.parse.urlsplit(url.rstrip("/"))
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url.rstrip("/")
        self.scheme = u.scheme
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.prefix = u.path.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._local = threading.local()

    # -- connections ------------------------------------------------------------------------

    def _conn(self, fresh: bool = False) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is not None and not fresh:
            return c
        if c is not None:
            c.close()
        if self.scheme == "https":
            c = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        else:
            c = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self._local.conn = c
        return c

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None

    def _headers(self) -> Dict[str, str]:
        h = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def _get(self, path: str) -> http.client.HTTPResponse:
        """Send GET and return the response with its body unread (caller reads or closes)."""
        full = self.prefix + path
        for attempt in (0, 1):
            conn = self._conn(fresh=attempt == 1)
            try:
                conn.request("GET", full, headers=self._headers())
                return conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError,
                    http.client.CannotSendRequest, http.client.ResponseNotReady):
                conn.close()
                self._local.conn = None
                if attempt == 1:
                    raise
            except Exception:
                conn.close()
                self._local.conn = None
                raise
        raise AssertionError("unreachable")

    def _check(self, res: http.client.HTTPResponse, path: str) -> None:
        if res.status == 200:
            return
        body = res.read(4096)
        self.close()  # the rest of an error body is not read: never reuse this connection
        cls = NotFound if res.status == 404 else HttpError
        raise cls(res.status, body, self.url + path)

    # -- API --------------------------------------------------------------------------------

    def get_json(self, path: str) -> dict:
        res = self._get(path)
        try:
            self._check(res, path)
            data = res.read()
        except Exception:
            self.close()
            raise
        if res.will_close:
            self.close()
        return json.loads(data)

    def version(self, owner: str, name: str, ref: str) -> dict:
        return self.get_json(
            f"/api/v1/adapters/{quote_path(owner)}/{quote_path(name)}/versions/{quote_path(ref)}"
        )

    def adapter(self, owner: str, name: str) -> dict:
        return self.get_json(f"/api/v1/adapters/{quote_path(owner)}/{quote_path(name)}")

    def download(self, owner: str, name: str, revision: str, path: str,
                 sink: Callable[[bytes], None]) -> int:
        """Stream one file of a version into ``sink`` chunk by chunk; return the byte count."""
        p = (f"/api/v1/adapters/{quote_path(owner)}/{quote_path(name)}/versions/"
             f"{revision}/files/{quote_path(path)}")
        res = self._get(p)
        n = 0
        try:
            self._check(res, p)
            while True:
                chunk = res.read(CHUNK)
                if not chunk:
                    break
                n += len(chunk)
                sink(chunk)
        except BaseException:
            self.close()
            raise
        if res.will_close:
            self.close()
        return n
