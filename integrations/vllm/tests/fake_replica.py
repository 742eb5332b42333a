"""A fake inference server for the sync tests: the adapter endpoints of vLLM or SGLang with their
documented request and response shapes, no model. It checks that a pushed ``lora_path`` is a
directory holding ``adapter_config.json``, as both servers do before loading.

vLLM (vllm/entrypoints/serve/lora/, vllm/entrypoints/openai/models/serving.py):
  POST /v1/load_lora_adapter {lora_name, lora_path, load_inplace?} → 200 text "Success: ..." |
       400 {"error": {...}} when the name is loaded and load_inplace is false
  POST /v1/unload_lora_adapter {lora_name} → 200 text | 404 {"error": {...}}
  GET  /v1/models → {"object": "list", "data": [{id, root, parent, ...}]}
SGLang (sglang/srt/entrypoints/http_server.py, managers/io_struct.py):
  POST /load_lora_adapter {lora_name, lora_path, pinned?} → 200 {success, error_message,
       loaded_adapters} | 400 with success false (name already loaded)
  POST /unload_lora_adapter {lora_name} → same shape
  GET  /v1/models → same shape as vLLM's (LoRA cards with root = path, parent = base model)
"""

from __future__ import annotations

import http.server
import json
import os
import threading
import time


class FakeReplica:
    def __init__(self, engine: str = "vllm", base_model: str = "quiver-test/tiny-llama",
                 support_inplace: bool = True):
        self.engine = engine
        self.base_model = base_model
        self.support_inplace = support_inplace
        self.adapters = {}  # name -> path
        self.calls = []  # (time, path, body)
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        rep = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status, obj):
                data = obj.encode() if isinstance(obj, str) else json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(obj, str)
                                 else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                if self.path != "/v1/models":
                    return self._send(404, {"detail": "Not Found"})
                with rep.lock:
                    cards = [{"id": rep.base_model, "object": "model", "owned_by": rep.engine,
                              "root": rep.base_model, "parent": None}]
                    cards += [{"id": n, "object": "model", "owned_by": rep.engine, "root": p,
                               "parent": rep.base_model} for n, p in rep.adapters.items()]
                self._send(200, {"object": "list", "data": cards})

            def do_POST(self):  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                with rep.cond:
                    rep.calls.append((time.monotonic(), self.path, body))
                    status, out = rep.handle(self.path, body)
                    rep.cond.notify_all()
                self._send(status, out)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    # -- behaviour (called with the lock held) ----------------------------------------------

    def _err(self, status, msg, typ):
        if self.engine == "vllm":
            return status, {"error": {"message": msg, "type": typ, "param": None, "code": status}}
        return status, {"success": False, "error_message": msg,
                        "loaded_adapters": dict(self.adapters)}

    def handle(self, path, body):
        v = self.engine == "vllm"
        name, lpath = body.get("lora_name"), body.get("lora_path")
        if path == ("/v1/load_lora_adapter" if v else "/load_lora_adapter"):
            if not name or not lpath:
                return self._err(400, "Both 'lora_name' and 'lora_path' must be provided.",
                                 "InvalidUserInput")
            inplace = v and self.support_inplace and bool(body.get("load_inplace"))
            if name in self.adapters and not inplace:
                return self._err(400, f"The lora adapter '{name}' has already been loaded.",
                                 "InvalidUserInput")
            if not os.path.isfile(os.path.join(lpath, "adapter_config.json")):
                return self._err(404, f"Loading lora {name} failed: No adapter found for {lpath}",
                                 "NotFoundError")
            self.adapters[name] = lpath
            if v:
                return 200, f"Success: LoRA adapter '{name}' added successfully."
            return 200, {"success": True, "error_message": None,
                         "loaded_adapters": dict(self.adapters)}
        if path == ("/v1/unload_lora_adapter" if v else "/unload_lora_adapter"):
            if name not in self.adapters:
                return self._err(404 if v else 400,
                                 f"The lora adapter '{name}' cannot be found.", "NotFoundError")
            del self.adapters[name]
            if v:
                return 200, f"Success: LoRA adapter '{name}' removed successfully."
            return 200, {"success": True, "error_message": None,
                         "loaded_adapters": dict(self.adapters)}
        return 404, {"detail": "Not Found"}

    # -- test helpers -----------------------------------------------------------------------

    def restart(self):
        """What a restarted replica looks like: nothing loaded."""
        with self.lock:
            self.adapters.clear()

    def wait_for(self, pred, timeout=10.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def close(self):
        self.server.shutdown()
        self.server.server_close()
