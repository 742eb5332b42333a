"""A small HTTP proxy in front of Quiver for the tests: counts file downloads and can corrupt
the bytes of chosen files (same length), to prove the resolver verifies what it gets."""

from __future__ import annotations

import http.client
import http.server
import threading
import urllib.parse


class Proxy:
    def __init__(self, upstream: str):
        u = urllib.parse.urlsplit(upstream)
        self.host, self.port = u.hostname, u.port
        self.file_gets = 0
        self.version_gets = 0
        self.corrupt = set()  # file names (last path part) whose bytes get flipped
        self.lock = threading.Lock()
        proxy = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):  # noqa: N802
                is_file = "/files/" in self.path
                with proxy.lock:
                    if is_file:
                        proxy.file_gets += 1
                    elif "/versions/" in self.path:
                        proxy.version_gets += 1
                c = http.client.HTTPConnection(proxy.host, proxy.port, timeout=60)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection")}
                c.request("GET", self.path, headers=headers)
                r = c.getresponse()
                body = r.read()
                c.close()
                name = urllib.parse.unquote(self.path.rsplit("/", 1)[-1])
                if is_file and r.status == 200 and name in proxy.corrupt and body:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("content-length", "connection", "transfer-encoding",
                                         "keep-alive"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
