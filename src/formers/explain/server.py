"""The explainer's local web server: the page (package data in ``static/``) and the JSON API.

Safety: it binds to 127.0.0.1 unless another host is asked for; it serves only the files shipped
in ``formers/explain/static`` (looked up by exact name in a fixed list, so no path reaches
elsewhere); request bodies are limited to :data:`MAX_BODY_BYTES` and prompts by the API's limits,
each with a plain-words message; models load from safetensors + JSON only (:mod:`.load`).
"""

from __future__ import annotations

import json
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

from formers.explain.api import ApiError, Explainer

MAX_BODY_BYTES = 16 * 1024
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}


def static_files() -> dict[str, bytes]:
    """name -> bytes of every file shipped in ``formers/explain/static`` (read once at start)."""
    root = resources.files("formers.explain") / "static"
    return {f.name: f.read_bytes() for f in root.iterdir() if f.is_file() and not f.name.startswith(".")}


def make_handler(explainer: Explainer, files: dict[str, bytes]) -> type[BaseHTTPRequestHandler]:
    routes = {"/api/forward": explainer.forward, "/api/generate": explainer.generate}

    class Handler(BaseHTTPRequestHandler):
        server_version = "formers-explain"

        def log_message(self, fmt: str, *args) -> None:  # quiet: the terminal shows the address only
            pass

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj: dict) -> None:
            self._send(status, json.dumps(obj, allow_nan=False).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path == "/api/info":
                return self._json(200, explainer.info())
            name = "index.html" if path in ("/", "/index.html") else (
                path[len("/static/"):] if path.startswith("/static/") else None)
            if name is None or name not in files:
                return self._json(404, {"error": f"not found: {path[:200]}"})
            ext = name[name.rfind("."):]
            self._send(200, files[name], TYPES.get(ext, "application/octet-stream"))

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path not in routes:
                return self._json(404, {"error": f"not found: {path[:200]}"})
            try:
                n = int(self.headers.get("Content-Length", ""))
            except ValueError:
                return self._json(411, {"error": "the request needs a Content-Length header"})
            if n > MAX_BODY_BYTES:
                self.close_connection = True
                return self._json(413, {"error": f"the request is {n} bytes; the limit is {MAX_BODY_BYTES} "
                                                 f"bytes: send a shorter text"})
            try:
                req = json.loads(self.rfile.read(n) or b"{}")
                if not isinstance(req, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                return self._json(400, {"error": f"the request body must be a JSON object ({e})"})
            try:
                self._json(200, routes[path](req))
            except ApiError as e:
                self._json(e.status, {"error": str(e)})
            except ValueError as e:  # a model-side check (ids, lengths)
                self._json(400, {"error": str(e)})

    return Handler


def make_server(explainer: Explainer, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A server for ``explainer`` on ``host``:``port`` (0 = a free port); not started.

    Raises ValueError for a port outside [0, 65535] and OSError when the port is taken."""
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in [0, 65535] (0 = any free port), got {port}")
    server = ThreadingHTTPServer((host, port), make_handler(explainer, static_files()))
    server.daemon_threads = True
    return server


def start_in_thread(explainer: Explainer, host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start a server in a daemon thread; returns (server, base URL). Stop with ``server.shutdown()``."""
    server = make_server(explainer, host, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    h, p = server.server_address[:2]
    return server, f"http://{'[' + h + ']' if ':' in h else h}:{p}/"


def serve(explainer: Explainer, host: str = "127.0.0.1", port: int = 0, open_browser: bool = True) -> None:
    """Serve until Ctrl-C, printing the address (and opening a browser unless told not to)."""
    server = make_server(explainer, host, port)
    h, p = server.server_address[:2]
    url = f"http://{'[' + h + ']' if ':' in h else h}:{p}/"
    if host not in LOOPBACK:
        print(f"warning: serving on {host}, reachable from other machines", file=sys.stderr)
    print(f"formers explain: {url}  (Ctrl-C stops)", flush=True)
    if open_browser:
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
