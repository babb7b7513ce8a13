"""Load test of `hvae.serving.server` on loopback: latency, throughput, peak RSS, determinism.

    python -m bench.serve_load [--model-uri URI] [--clients 4] [--requests 20] [--rows 100]
        [--iw-samples 100] [--bodies 4] [--max-seconds 300] [--workers 1]

Starts `hvae.serving.server.serve` in a subprocess on a free loopback port, waits for /ping, sends
each of `--bodies` request bodies once in turn (the sequential reference), then runs
`--clients` threads of `--requests` requests each over the same bodies (no new request
starts after `--max-seconds`), and stops the server. Prints p50/p99 latency, requests/s,
the server's peak RSS (VmHWM of the server process and its children, read just before it
stops) and how many concurrent responses are bitwise equal to the sequential response for
the same body. Without --model-uri, the params.yaml architecture with random weights is
saved as a pyfunc model in a temporary folder (as costly to score as a trained one); any
URI mlflow.pyfunc.load_model reads works too, e.g. models:/hvae-mnist/1 with
MLFLOW_TRACKING_URI=sqlite:////work/main/mlflow.db.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from bench.args import count, seconds
from hvae.serving.pyfunc import MAX_IW_SAMPLES, MAX_ROWS

SERVER = (
    "import sys\n"
    "from hvae.serving.server import serve\n"
    "serve(sys.argv[1], '127.0.0.1', int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))"
)


def default_model(folder: Path, params: str) -> str:
    """The params.yaml architecture, random weights, saved as registry.log_model logs it."""
    import keras
    import mlflow
    import pandas as pd

    from hvae import artifacts
    from hvae.config import load_params
    from hvae.model import build_model
    from hvae.serving.pyfunc import LIMITS, HVAEScorer
    from hvae.tracking import registry

    keras.utils.set_random_seed(0)
    weights = folder / "weights"
    weights.mkdir()
    model = build_model(load_params(params).model.model_dump())
    model.save_weights(weights / artifacts.WEIGHTS)
    artifacts.save_config(model, weights)
    frame = pd.DataFrame(np.zeros((2, 784)), columns=[f"p{i}" for i in range(784)])
    scores = HVAEScorer(weights).predict(frame, {"iw_samples": 2})
    path = folder / "pyfunc"
    mlflow.pyfunc.save_model(
        str(path),
        loader_module="hvae.serving.pyfunc",
        data_path=str(weights),
        signature=registry._signature(frame, scores),
        pip_requirements=registry.pinned_requirements(),
        metadata={"serving_limits": LIMITS},
    )
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes, timeout: float) -> tuple[int, bytes, float]:
    """(status, response body, seconds) of one POST."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, data = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, data = error.code, error.read()
    return status, data, time.perf_counter() - started


def wait_for_ping(base: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"no answer on {base}/ping within {timeout:.0f} s")


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):  # the task ended meanwhile
                todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def peak_rss_mib(pid: int) -> tuple[float, int]:
    """(sum of VmHWM over the process and its descendants in MiB, how many processes)."""
    total, count = 0, 0
    for p in _descendants(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines() if "VmHWM" in line)
        count += 1
    return total / 1024, count


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def bodies(n: int, rows: int, iw_samples: int) -> list[bytes]:
    columns = [f"p{i}" for i in range(784)]
    out = []
    for seed in range(n):
        pixels = np.random.default_rng(seed).integers(0, 256, (rows, 784)).tolist()
        split = {"columns": columns, "data": pixels}
        out.append(json.dumps({"dataframe_split": split, "params": {"iw_samples": iw_samples}}))
    return [b.encode() for b in out]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", help="default: a random model of --params' architecture")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--clients", type=count(1, 64), default=4)
    parser.add_argument("--requests", type=count(1, 100_000), default=20, help="per client")
    parser.add_argument("--rows", type=count(1, MAX_ROWS), default=100)
    parser.add_argument("--iw-samples", type=count(1, MAX_IW_SAMPLES), default=100)
    parser.add_argument("--bodies", type=count(1, 1000), default=4, help="distinct request bodies")
    parser.add_argument(
        "--max-seconds", type=seconds(1, 86_400), default=300.0, help="wall-time cap"
    )
    parser.add_argument("--request-timeout", type=seconds(1, 3600), default=120.0)
    parser.add_argument("--start-timeout", type=seconds(1, 3600), default=180.0)
    parser.add_argument("--max-body-bytes", type=count(1, 2**31), default=32 * 2**20)
    parser.add_argument("--workers", type=count(1, 16), default=1)
    return parser


def main() -> None:
    args = build_parser().parse_args()

    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "server.log", "w+b") as log:
        uri = args.model_uri or default_model(Path(tmp), args.params)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-c", SERVER, uri, str(port), str(args.max_body_bytes)]
        server = subprocess.Popen(
            [*command, str(args.workers)], stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )  # fmt: skip
        try:
            started = time.perf_counter()
            wait_for_ping(base, server, args.start_timeout)
            startup = time.perf_counter() - started
            results = run(args, f"{base}/invocations")
            rss, processes = peak_rss_mib(server.pid)
        except Exception:
            log.seek(0)
            sys.stderr.write(log.read()[-4000:].decode(errors="replace"))
            raise
        finally:
            stop(server)
    report(args, uri, startup, results, rss, processes)


def run(args: argparse.Namespace, url: str) -> dict:
    payloads = bodies(args.bodies, args.rows, args.iw_samples)
    post(url, payloads[0], args.request_timeout)  # warm-up: tracing the compiled passes
    reference = []
    for body in payloads:
        status, data, seconds = post(url, body, args.request_timeout)
        if status != 200:
            raise RuntimeError(f"sequential request: HTTP {status}: {data[:300]!r}")
        reference.append((data, seconds))
    deadline = time.monotonic() + args.max_seconds
    lock = threading.Lock()
    done: list[tuple[int, bool, float]] = []  # status, equal to the reference, seconds

    def client(index: int) -> None:
        for i in range(args.requests):
            if time.monotonic() > deadline:
                return
            which = (index + i) % len(payloads)
            status, data, seconds = post(url, payloads[which], args.request_timeout)
            with lock:
                done.append((status, data == reference[which][0], seconds))

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"sequential": [s for _, s in reference], "done": done, "wall": wall}


def report(args, uri: str, startup: float, results: dict, rss: float, processes: int) -> None:
    done, wall = results["done"], results["wall"]
    latency = np.array([s for _, _, s in done])
    ok = sum(status == 200 for status, _, _ in done)
    equal = sum(same for _, same, _ in done)
    print(f"model: {uri}")
    print(f"server: {args.workers} worker(s), ready in {startup:.1f} s")
    print(
        f"load: {args.clients} clients x {args.requests} requests, {args.rows} rows, "
        f"iw_samples {args.iw_samples}, {args.bodies} distinct bodies, cap {args.max_seconds:.0f} s"
    )
    sequential = ", ".join(f"{s:.2f}" for s in results["sequential"])
    print(f"sequential latency per body (s): {sequential}")
    print(f"{'metric':<40}{'value':>12}")
    rows = [
        ("requests completed", f"{len(done)}"),
        ("HTTP 200", f"{ok}"),
        ("wall time (s)", f"{wall:.1f}"),
        ("latency p50 (s)", f"{np.percentile(latency, 50):.2f}" if done else "-"),
        ("latency p99 (s)", f"{np.percentile(latency, 99):.2f}" if done else "-"),
        ("requests/s", f"{len(done) / wall:.2f}"),
        ("rows/s", f"{len(done) * args.rows / wall:.0f}"),
        (f"server peak RSS, {processes} process(es), MiB", f"{rss:.0f}"),
        ("bitwise equal to sequential", f"{equal}/{len(done)}"),
    ]
    for name, value in rows:
        print(f"{name:<40}{value:>12}")


if __name__ == "__main__":
    main()
