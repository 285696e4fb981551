"""A local HTTP server that speaks the OpenAI Chat Completions and Anthropic Messages wire formats.

Tests point the real SDKs at it (base_url) and script its replies:

    with FakeLLMServer() as server:
        server.push(reply("HYPOTHESIS: ..."), status(429), reply("..."))
        ... OpenAI(base_url=server.openai_url) / Anthropic(base_url=server.url) ...
        server.requests  # what the SDK sent: path, headers, parsed JSON body

A scripted item is rendered for whichever endpoint asked: `reply` becomes a chat.completion or a
message with content blocks and usage; `models("a", "b")` answers GET /v1/models (OpenAI's list) or
GET /v1/models/{id} (Anthropic's model object, 404 for an id not among them). When the script runs out the server answers 500 with
`x-should-retry: false`, so a test that asks too often fails fast instead of hanging.
"""

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Scripted:
    kind: str  # "reply" | "status" | "raw"
    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    code: int = 200
    body: bytes = b""
    headers: dict = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (to trip the client's timeout)


def reply(text: str, input_tokens: int = 1000, output_tokens: int = 200) -> Scripted:
    """A successful completion whose text is `text`."""
    return Scripted("reply", text=text, input_tokens=input_tokens, output_tokens=output_tokens)


def status(code: int, message: str = "scripted error", retry_after_ms: int | None = 10) -> Scripted:
    """An error status with a JSON error body; retry-after-ms keeps the SDK's backoff short."""
    headers = {"retry-after-ms": str(retry_after_ms)} if retry_after_ms is not None else {}
    body = json.dumps({"type": "error", "error": {"type": "scripted_error", "message": message}})
    return Scripted("status", code=code, body=body.encode(), headers=headers)


def raw(body: bytes, code: int = 200, content_type: str = "application/json") -> Scripted:
    """Any body at all, e.g. malformed JSON."""
    return Scripted("raw", code=code, body=body, headers={"content-type": content_type})


def models(*ids: str) -> Scripted:
    """The models a GET /v1/models or /v1/models/{id} sees."""
    return Scripted("models", text="\n".join(ids))


def slow(seconds: float, text: str = "too late") -> Scripted:
    """A reply that only comes after `seconds`."""
    return Scripted("reply", text=text, delay=seconds)


@dataclass
class Request:
    path: str
    headers: dict  # names lower-cased
    body: dict | None
    raw: bytes


class FakeLLMServer:
    def __init__(self):
        self.script: list[Scripted] = []
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    def push(self, *items: Scripted) -> None:
        with self._lock:
            self.script.extend(items)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()

    def _next(self) -> Scripted:
        with self._lock:
            if self.script:
                return self.script.pop(0)
        return Scripted(
            "status",
            code=500,
            body=b'{"error": {"message": "fake server: no scripted reply left"}}',
            headers={"x-should-retry": "false"},
        )

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                with server._lock:
                    server.requests.append(Request(self.path, {k.lower(): v for k, v in self.headers.items()}, None, b""))
                item = server._next()
                if item.kind == "models":
                    code, payload = _render_models(self.path, item.text.split("\n") if item.text else [])
                    self._send(code, json.dumps(payload).encode(), {"content-type": "application/json"})
                else:
                    self._send(item.code, item.body, {"content-type": "application/json", **item.headers})

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                data = self.rfile.read(length)
                try:
                    body = json.loads(data)
                except ValueError:
                    body = None
                with server._lock:
                    server.requests.append(Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body, data))
                item = server._next()
                if item.delay:
                    time.sleep(item.delay)
                if item.kind == "reply":
                    payload = _render(self.path, body or {}, item)
                    self._send(200, json.dumps(payload).encode(), {"content-type": "application/json"})
                else:
                    headers = {"content-type": "application/json", **item.headers}
                    self._send(item.code, item.body, headers)

            def _send(self, code: int, payload: bytes, headers: dict):
                self.send_response(code)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler


def _render_models(path: str, ids: list[str]) -> tuple[int, dict]:
    path = path.split("?", 1)[0].rstrip("/")
    if path.endswith("/models"):
        return 200, {"object": "list", "data": [{"id": i, "object": "model", "created": 1700000000, "owned_by": "fake"} for i in ids]}
    wanted = path.rsplit("/", 1)[1]
    if wanted not in ids:
        return 404, {"type": "error", "error": {"type": "not_found_error", "message": f"model: {wanted}"}}
    return 200, {"type": "model", "id": wanted, "display_name": wanted, "created_at": "2026-01-01T00:00:00Z"}


def _render(path: str, request: dict, item: Scripted) -> dict:
    model = request.get("model", "fake-model")
    if path.endswith("/messages"):
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": item.text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": item.input_tokens, "output_tokens": item.output_tokens},
        }
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": item.text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": item.input_tokens,
            "completion_tokens": item.output_tokens,
            "total_tokens": item.input_tokens + item.output_tokens,
        },
    }
