"""The HTTP layer: MLflow's scoring app behind hvae.serving.server.Guard, on a tiny saved model.

Requests go straight to the ASGI app (no network) through `_call`; one test runs the guard
under a real uvicorn server on loopback, for chunked uploads.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT

from hvae import artifacts
from hvae.model import build_model
from hvae.serving import server
from hvae.serving.pyfunc import LIMITS, HVAEScorer
from hvae.tracking import registry


class Reply:
    def __init__(self, status: int, headers: dict[bytes, bytes], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> dict:
        return json.loads(self.body)


def _call(app, path: str, body: bytes = b"", chunks: list[bytes] | None = None, headers=()):
    """One HTTP request through an ASGI app; `chunks` sends the body in pieces."""
    pieces = chunks if chunks is not None else [body]
    incoming = [
        {"type": "http.request", "body": c, "more_body": i < len(pieces) - 1}
        for i, c in enumerate(pieces)
    ]
    header_list = [(b"content-type", b"application/json"), *headers]
    if chunks is None:
        header_list.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST" if body or chunks else "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": header_list,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict] = []

    async def receive() -> dict:
        if incoming:
            return incoming.pop(0)
        await asyncio.Event().wait()  # the client stays until the response is complete
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body_out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Reply(start["status"], dict(start.get("headers", [])), body_out)


def _pixels(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 784))


def _request(pixels: np.ndarray, **params) -> bytes:
    split = {"columns": [f"p{i}" for i in range(784)], "data": pixels.tolist()}
    return json.dumps({"dataframe_split": split, "params": params}).encode()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    keras.utils.set_random_seed(0)
    model = build_model({"latent_dims": [4, 3], "hidden_dim": 16})
    model.save_weights(folder / artifacts.WEIGHTS)
    artifacts.save_config(model, folder)
    return folder


@pytest.fixture(scope="module")
def app(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """server.app on a pyfunc model saved as registry.log_model logs it."""
    frame = pd.DataFrame(_pixels(2).astype(np.float64), columns=[f"p{i}" for i in range(784)])
    scores = HVAEScorer(model_dir).predict(frame, {"iw_samples": 4})
    path = tmp_path_factory.mktemp("pyfunc") / "model"
    mlflow.pyfunc.save_model(
        str(path),
        loader_module="hvae.serving.pyfunc",
        data_path=str(model_dir),
        signature=registry._signature(frame, scores),
        pip_requirements=["mlflow"],
        metadata={"serving_limits": LIMITS},
    )
    # scoring_server.init marks the process as a serving environment; undo that afterwards.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(_MLFLOW_IS_IN_SERVING_ENVIRONMENT.name, "false")
        yield server.app(str(path), max_body_bytes=server.MAX_BODY_BYTES)


def test_ping(app) -> None:
    assert _call(app, "/ping").status == 200


def test_scores_are_the_scorers(app, model_dir: Path) -> None:
    pixels = _pixels(3)
    reply = _call(app, "/invocations", _request(pixels, iw_samples=5))
    assert reply.status == 200, reply.body
    got = pd.DataFrame(reply.json()["predictions"]).astype(np.float32)
    expected = HVAEScorer(model_dir).predict(pixels, {"iw_samples": 5})
    np.testing.assert_array_equal(got.to_numpy(), expected.to_numpy())


@pytest.mark.parametrize("bad", [0, -5, 10**7, 2.5, "10", True, "9" * 100_000])
def test_bad_iw_samples_is_a_short_400(app, bad: object) -> None:
    reply = _call(app, "/invocations", _request(_pixels(1), iw_samples=bad))
    assert reply.status == 400
    assert len(reply.body) <= server.MAX_ERROR_BYTES
    message = reply.json()["message"]
    assert "iw_samples" in message and "Failed to predict" not in message and "\n" not in message
    if isinstance(bad, int) and not isinstance(bad, bool):
        # Integers reach the scorer, whose message arrives whole.
        assert message == f"iw_samples: expected an integer from 1 to 1000, got {bad}"
        assert reply.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_budget_error_names_the_fields(app) -> None:
    reply = _call(app, "/invocations", _request(np.zeros((201, 784), int), iw_samples=1000))
    assert reply.status == 400 and len(reply.body) <= server.MAX_ERROR_BYTES
    assert reply.json()["message"] == (
        "rows * iw_samples: expected at most 200000, got 201 * 1000 = 201000"
    )


def test_a_malformed_body_is_not_echoed(app) -> None:
    body = b'{"dataframe_split": ' + b"x" * 2_000_000
    reply = _call(app, "/invocations", body)
    assert reply.status == 400 and len(reply.body) <= server.MAX_ERROR_BYTES
    assert "Ensure that input is a valid JSON" in reply.json()["message"]
    assert b"xxxxxxxxxx" not in reply.body
    assert reply.headers[b"content-length"] == str(len(reply.body)).encode()


def test_short_errors_pass_unchanged(app) -> None:
    reply = _call(app, "/nowhere")
    assert reply.status == 404 and reply.json() == {"detail": "Not Found"}


# -- the guard alone, around stand-in apps ------------------------------------------------


def _echo_app(calls: list[int]):
    async def echo(scope, receive, send) -> None:
        message = await receive()
        calls.append(len(message["body"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": message["body"]})

    return echo


def _error_app(status: int, body: bytes, pieces: int = 1):
    async def fail(scope, receive, send) -> None:
        await receive()
        headers = [(b"content-type", b"text/plain"), (b"x-kept", b"1")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        size = -(-len(body) // pieces)
        for i in range(pieces):
            chunk = body[i * size : (i + 1) * size]
            await send({"type": "http.response.body", "body": chunk, "more_body": i < pieces - 1})

    return fail


def test_body_limit_by_content_length() -> None:
    calls: list[int] = []
    guarded = server.Guard(_echo_app(calls), max_body_bytes=10_000)
    reply = _call(guarded, "/invocations", b"x" * 20_000)
    assert reply.status == 413 and calls == []
    assert reply.json() == {
        "error_code": "RESOURCE_LIMIT_EXCEEDED",
        "message": "request body: expected at most 10000 bytes, got 20000",
    }
    assert _call(guarded, "/invocations", b"x" * 10_000).body == b"x" * 10_000


def test_body_limit_while_streaming() -> None:
    calls: list[int] = []
    guarded = server.Guard(_echo_app(calls), max_body_bytes=10_000)
    reply = _call(guarded, "/invocations", chunks=[b"x" * 4000] * 3)
    assert reply.status == 413 and calls == []
    assert "got more" in reply.json()["message"]
    # Under the limit, the app reads the body as one message.
    assert _call(guarded, "/invocations", chunks=[b"y" * 4000] * 2).body == b"y" * 8000
    assert calls == [8000]


def _refuse(headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    """(status, body messages read) for a 20 000-byte upload in 5 pieces, limit 10 000."""
    queue = [{"type": "http.request", "body": b"x" * 4000, "more_body": i < 4} for i in range(5)]
    sent: list[dict] = []

    async def receive() -> dict:
        return queue.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)

    guarded = server.Guard(_echo_app([]), max_body_bytes=10_000)
    asyncio.run(guarded({"type": "http", "headers": headers}, receive, send))
    return sent[0]["status"], 5 - len(queue)


def test_a_refused_body_is_read_to_its_end() -> None:
    """The client sees the 413 rather than a reset: the rest of its upload is read and
    dropped; unless it waits for "100 Continue", and then nothing is read."""
    length = (b"content-length", b"20000")
    assert _refuse([length]) == (413, 5)
    assert _refuse([length, (b"expect", b"100-continue")]) == (413, 0)
    assert _refuse([]) == (413, 5)  # counted while streaming


def test_a_long_error_is_cut_to_its_first_line() -> None:
    guarded = server.Guard(_error_app(500, b"boom\n" + b"payload " * 10_000))
    reply = _call(guarded, "/invocations", b"{}")
    assert reply.status == 500
    assert reply.json() == {"error_code": "INTERNAL_ERROR", "message": "boom"}
    assert reply.headers[b"x-kept"] == b"1"
    assert reply.headers[b"content-type"] == b"application/json"


def test_a_huge_json_error_keeps_its_code_and_message() -> None:
    """Only the head of a streamed 5 MB error body is kept, and it is enough."""
    long = "Failed to predict data '" + "p" * 5_000_000 + "'"
    body = json.dumps({"error_code": "BAD_REQUEST", "message": long}).encode()
    reply = _call(server.Guard(_error_app(400, body, pieces=50)), "/invocations", b"{}")
    assert reply.json()["error_code"] == "BAD_REQUEST"
    assert len(reply.json()["message"]) == server.MESSAGE_CHARS


def test_short_message() -> None:
    wrapped = "Failed to predict data '   p0  p1\n0  1  2'. \nError: iw_samples: expected..."
    assert server.short_message(wrapped) == "iw_samples: expected..."
    assert server.short_message("\n\n  first  \nsecond") == "first"
    assert len(server.short_message("y" * 10_000)) == server.MESSAGE_CHARS


def test_guard_under_uvicorn_refuses_a_chunked_upload() -> None:
    """A real server on loopback: a chunked body (no Content-Length) is counted as it comes."""
    import uvicorn

    calls: list[int] = []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    guarded = server.Guard(_echo_app(calls), max_body_bytes=10_000)
    uv = uvicorn.Server(uvicorn.Config(guarded, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not uv.started and time.monotonic() < deadline:
            time.sleep(0.05)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("POST", "/invocations", body=iter([b"z" * 6000] * 3))
        response = connection.getresponse()
        assert response.status == 413 and calls == []
        assert b"got more" in response.read()
        connection.close()
    finally:
        uv.should_exit = True
        thread.join(10)
