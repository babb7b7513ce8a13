"""HTTP scoring of a logged or registered model: MLflow's own scoring app behind a guard.

`mlflow.pyfunc.scoring_server.init(model)` gives the /ping, /health, /version and
/invocations endpoints of `mlflow models serve`. Two things it does not do are added by a
small pure-ASGI middleware (`Guard`):

- Request bodies above `max_body_bytes` are refused with 413 before MLflow parses them,
  by their Content-Length and, for chunked uploads, by counting while they arrive (the
  rest of a refused upload is read and dropped, so the client gets the 413, not a reset).
- An error response body (status >= 400) longer than MAX_ERROR_BYTES, or holding MLflow's
  "Failed to predict data '<input repr>'" prefix, is replaced by `{"error_code": ...,
  "message": ...}` with its first meaningful line cut to MESSAGE_CHARS: MLflow echoes a
  malformed body in full ("Input: ...") and prefixes a model's error with the input's
  repr, and neither should travel back to the client.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# 10 000 rows (the scorer's MAX_ROWS) of integer grey levels in `dataframe_split` JSON take
# at most 10 000 * 784 * 4 bytes (~30 MiB).
MAX_BODY_BYTES = 32 * 2**20
MAX_ERROR_BYTES = 512
MESSAGE_CHARS = 300
# Only the head of a long error body is kept: MLflow puts error_code and message first.
_HEAD_BYTES = 64 * 2**10
# A refused body is read and dropped up to this size, so that the client sees the 413.
_DRAIN_BYTES = 256 * 2**20
_PREDICT_PREFIX = "Failed to predict data"
# MLflow's own error codes, for error bodies that carry none.
_CODES = {
    400: "BAD_REQUEST",
    404: "ENDPOINT_NOT_FOUND",
    413: "RESOURCE_LIMIT_EXCEEDED",
    504: "DEADLINE_EXCEEDED",
}
_ENV_URI, _ENV_BYTES = "HVAE_SERVE_MODEL_URI", "HVAE_SERVE_MAX_BODY_BYTES"


def short_message(text: str) -> str:
    """The one line of an error message worth returning, at most MESSAGE_CHARS long."""
    if text.startswith(_PREDICT_PREFIX) and "\nError: " in text:
        # MLflow wraps the model's own message: "Failed to predict data '<repr>'. \nError: ..."
        text = text.rsplit("\nError: ", 1)[1]
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 3] + "..."


def _parse_error(head: bytes, complete: bool) -> tuple[str | None, str]:
    """(error_code, message) of an error body, of which `head` is all or the start."""
    text = head.decode("utf-8", errors="replace")
    if complete:
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if isinstance(body, dict) and "message" in body:
            code = body.get("error_code")
            return (code if isinstance(code, str) else None), str(body["message"])
    code = re.search(r'"error_code"\s*:\s*"([A-Z_]{1,64})"', text)
    message = re.search(r'"message"\s*:\s*"((?:[^"\\]|\\.){0,4000})', text)
    if message is None:
        return (code and code.group(1)), text
    escaped = message.group(1)
    try:
        decoded = json.loads(f'"{escaped}"')
    except ValueError:  # cut inside an escape sequence: keep it raw
        decoded = escaped
    return (code and code.group(1)), decoded


def error_body(status: int, code: str | None, message: str) -> bytes:
    fallback = _CODES.get(status, "INTERNAL_ERROR" if status >= 500 else "BAD_REQUEST")
    return json.dumps({"error_code": code or fallback, "message": short_message(message)}).encode()


class Guard:
    """ASGI middleware: a request body limit and short error bodies (see the module doc)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = MAX_BODY_BYTES):
        self.app = app
        self.max_body_bytes = int(max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            if declared <= _DRAIN_BYTES and not _expects_continue(scope):
                await _drain(receive)
            message = f"request body: expected at most {limit} bytes, got {declared}"
            await _respond(send, 413, error_body(413, None, message))
            return
        body, state = await _read_body(receive, limit)
        if state == "gone":  # the client left mid-upload: nobody to score for
            return
        if state == "too large":
            message = f"request body: expected at most {limit} bytes, got more"
            await _respond(send, 413, error_body(413, None, message))
            return
        await self.app(scope, _replay(body, receive), _shorten_errors(send))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server has refused it already; count the body instead
    return None


def _expects_continue(scope: Scope) -> bool:
    return any(k.lower() == b"expect" and v.lower() == b"100-continue" for k, v in scope["headers"])


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, str]:
    """The whole request body and "ok"; "too large" once it passes `limit` bytes (the rest
    is dropped); or "gone" if the client disconnected first."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"", "gone"
        chunk = message.get("body", b"")
        size += len(chunk)
        more = message.get("more_body", False)
        if size > limit:
            if more:
                await _drain(receive)
            return b"", "too large"
        chunks.append(chunk)
        if not more:
            return b"".join(chunks), "ok"


async def _drain(receive: Receive) -> None:
    """Read and drop the rest of a refused body, up to _DRAIN_BYTES.

    A client that sends its whole body before reading the answer (urllib, requests) would
    otherwise meet a connection reset instead of the 413. One that waits for "100 Continue"
    is answered at once, before it sends anything.
    """
    size = 0
    while size <= _DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return
        size += len(message.get("body", b""))


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that hands the app the buffered body, then the client's own messages."""
    done = False

    async def replay() -> Message:
        nonlocal done
        if done:
            return await receive()
        done = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _shorten_errors(send: Send) -> Send:
    """A send() that holds an error response and replaces a long body by a short one."""
    start: Message | None = None
    head, size = bytearray(), 0

    async def wrapped(message: Message) -> None:
        nonlocal start, size
        if message["type"] == "http.response.start" and message["status"] >= 400:
            start = message
            return
        if start is None or message["type"] != "http.response.body":
            await send(message)
            return
        chunk = message.get("body", b"")
        size += len(chunk)
        head.extend(chunk[: max(0, _HEAD_BYTES - len(head))])
        if message.get("more_body", False):
            return
        status = start["status"]
        # A short body passes unchanged unless it holds MLflow's echo of the input.
        if size <= MAX_ERROR_BYTES and _PREDICT_PREFIX.encode() not in head:
            await send(start)
            await send({"type": "http.response.body", "body": bytes(head)})
            return
        code, text = _parse_error(bytes(head), complete=size <= _HEAD_BYTES)
        await _respond(send, status, error_body(status, code, text), start.get("headers", []))

    return wrapped


async def _respond(send: Send, status: int, body: bytes, headers=()) -> None:
    # Keep the app's other headers; length and type are this body's.
    kept = [(k, v) for k, v in headers if k.lower() not in (b"content-length", b"content-type")]
    kept += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": kept})
    await send({"type": "http.response.body", "body": body})


def app(model_uri: str, max_body_bytes: int = MAX_BODY_BYTES) -> ASGIApp:
    """MLflow's scoring app for `model_uri` (any URI mlflow.pyfunc.load_model reads), guarded."""
    import mlflow.pyfunc
    from mlflow.pyfunc import scoring_server

    model = mlflow.pyfunc.load_model(model_uri)
    return Guard(scoring_server.init(model), max_body_bytes)


def app_from_env() -> ASGIApp:
    """The guarded app configured by environment: each uvicorn worker process builds one."""
    return app(os.environ[_ENV_URI], int(os.environ.get(_ENV_BYTES, MAX_BODY_BYTES)))


def serve(
    model_uri: str,
    host: str = "127.0.0.1",
    port: int = 5000,
    max_body_bytes: int = MAX_BODY_BYTES,
    workers: int = 1,
) -> None:
    """Serve `model_uri` with uvicorn until interrupted (each worker loads the model)."""
    import uvicorn

    if workers == 1:
        uvicorn.run(app(model_uri, max_body_bytes), host=host, port=port)
        return
    # Several workers are separate processes: uvicorn imports the app factory in each.
    os.environ[_ENV_URI] = model_uri
    os.environ[_ENV_BYTES] = str(max_body_bytes)
    uvicorn.run(
        "hvae.serving.server:app_from_env", factory=True, host=host, port=port, workers=workers
    )
