"""Load test of the web app on loopback: concurrent uploads, throughput, latency, errors.

Starts `create_app` under uvicorn on 127.0.0.1 (never another address) in this
process, then, with a bounded number of requests and a time limit:
  baseline   --baseline uploads one at a time before and again after the load phase
             (sequential throughput and latency), and /health latency while idle
  load       --concurrency clients sending --requests uploads of the same synthetic
             patient zip at once, while a prober calls /health every 0.1 s
Reported: throughput (uploads/s) and its ratio to the sequential baseline; upload
latency p50/p95; /health p50/p95 under load and the ratio to idle (the event loop
must keep answering while the model runs in a worker thread); errors by status
(goal: none). The model is --model, else the bundled one, else an untrained
default-config U-Net (random weights: the speed is the same, the masks are not).

  python benchmarks/bench_web_load.py                       # 16 uploads, 4 clients
  python benchmarks/bench_web_load.py --requests 32 --concurrency 8 --model runs/r1/best.pt
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx

HOST = "127.0.0.1"  # loopback only, by design


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def patient_zip(tmp: Path, slices: int, size: int) -> bytes:
    """One synthetic patient (images and masks) zipped in the Kaggle layout."""
    from gliomaseg.synth import write_dataset

    root = write_dataset(tmp / "synth", cases=1, seed=0, slices=slices, size=size)
    folder = next(p for p in root.iterdir() if p.is_dir())
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, f"{folder.name}/{p.name}")
    return buf.getvalue()


def get_model(path: Path | None, tmp: Path, backend: str = "torch"):
    from gliomaseg.checkpoint import CheckpointError, save_checkpoint
    from gliomaseg.config import Config
    from gliomaseg.inference import load_model
    from gliomaseg.model import build_model

    if path is not None:
        return load_model(path, backend), f"{path} ({backend})"
    try:
        return load_model(None, backend), f"bundled model ({backend})"
    except CheckpointError:
        cfg = Config()
        model = build_model(cfg.data.in_channels, cfg.model)
        save_checkpoint(tmp / "untrained.pt", {"model": model.state_dict(),
                                               "config": cfg.to_dict()})
        return load_model(tmp / "untrained.pt"), "untrained default-config U-Net"


def start_server(app) -> tuple[str, object, threading.Thread]:
    import uvicorn

    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sys.exit("the server did not start")
        time.sleep(0.05)
    return f"http://{HOST}:{port}", server, thread


def upload(client: httpx.Client, url: str, body: bytes) -> tuple[float, int]:
    start = time.perf_counter()
    try:
        status = client.post(f"{url}/api/uploads?filename=patient.zip", content=body).status_code
    except httpx.HTTPError:
        status = 0  # connection error or timeout
    return time.perf_counter() - start, status


def probe_health(client: httpx.Client, url: str, stop: threading.Event, out: list[float],
                 failures: list[int]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        try:
            ok = client.get(f"{url}/health").status_code == 200
        except httpx.HTTPError:
            ok = False
        out.append(time.perf_counter() - start)
        if not ok:
            failures.append(1)
        stop.wait(0.1)


def run(args: argparse.Namespace) -> dict:
    from gliomaseg.web import WebSettings, create_app

    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        tmp = Path(tmp)
        body = patient_zip(tmp, args.slices, args.size)
        segmenter, model_name = get_model(args.model, tmp, args.backend)
        settings = WebSettings(max_concurrent=args.server_concurrency,
                               max_queue=max(8, args.concurrency), temp_root=tmp)
        url, server, thread = start_server(create_app(segmenter, settings))
        timeout = httpx.Timeout(args.time_limit)
        try:
            with httpx.Client(timeout=timeout, trust_env=False) as client:
                upload(client, url, body)  # warm-up (first-call allocations), not counted
                idle = []
                for _ in range(20):
                    start = time.perf_counter()
                    client.get(f"{url}/health")
                    idle.append(time.perf_counter() - start)
                sequential = [upload(client, url, body) for _ in range(args.baseline)]

            stop, health, health_fail = threading.Event(), [], []
            clients = [httpx.Client(timeout=timeout, trust_env=False)
                       for _ in range(args.concurrency + 1)]
            prober = threading.Thread(target=probe_health,
                                      args=(clients[-1], url, stop, health, health_fail))
            prober.start()
            load_start = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                futures = [pool.submit(upload, clients[i % args.concurrency], url, body)
                           for i in range(args.requests)]
                loaded = [f.result() for f in futures]
            load_wall = time.perf_counter() - load_start
            stop.set()
            prober.join()
            for c in clients:
                c.close()
            with httpx.Client(timeout=timeout, trust_env=False) as client:
                # The baseline brackets the load phase, so that drift in the machine's load
                # (other jobs on a shared CPU) affects both sides alike.
                sequential += [upload(client, url, body) for _ in range(args.baseline)]
        finally:
            server.should_exit = True
            thread.join(30)

    load_average = os.getloadavg()[0]  # other jobs on the machine make every number noisier
    latencies = [t for t, status in loaded if status == 201]
    errors: dict[str, int] = {}
    for _, status in loaded + sequential:
        if status != 201:
            errors[str(status)] = errors.get(str(status), 0) + 1
    seq_throughput = len(sequential) / sum(t for t, _ in sequential)
    throughput = len(latencies) / load_wall
    return {
        "model": model_name, "slices": args.slices, "size": args.size,
        "zip_mb": round(len(body) / 2**20, 2), "requests": args.requests,
        "concurrency": args.concurrency, "server_concurrency": args.server_concurrency,
        "sequential": {"uploads": len(sequential), "throughput": round(seq_throughput, 3),
                       "latency_p50": round(statistics.median(t for t, _ in sequential), 3)},
        "load": {"throughput": round(throughput, 3),
                 "throughput_ratio_vs_sequential": round(throughput / seq_throughput, 2),
                 "latency_p50": round(percentile(latencies, 50), 3),
                 "latency_p95": round(percentile(latencies, 95), 3),
                 "wall_seconds": round(load_wall, 1)},
        "health": {"idle_p50_ms": round(1000 * percentile(idle, 50), 1),
                   "idle_p95_ms": round(1000 * percentile(idle, 95), 1),
                   "load_p50_ms": round(1000 * percentile(health, 50), 1),
                   "load_p95_ms": round(1000 * percentile(health, 95), 1),
                   "load_p95_ratio_vs_idle": round(percentile(health, 95)
                                                   / max(percentile(idle, 95), 1e-9), 1),
                   "probes": len(health), "failures": len(health_fail)},
        "errors": errors, "load_average_1min": round(load_average, 2),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=16, help="uploads under load (max 200)")
    p.add_argument("--concurrency", type=int, default=4, help="concurrent clients (max 16)")
    p.add_argument("--baseline", type=int, default=2,
                   help="sequential uploads before and after the load phase")
    p.add_argument("--server-concurrency", type=int, default=1,
                   help="models the server runs at once (WebSettings.max_concurrent)")
    p.add_argument("--slices", type=int, default=24)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--model", type=Path)
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="onnx without --model: the bundled model, exported once into the cache")
    p.add_argument("--time-limit", type=float, default=300.0, help="seconds per request")
    p.add_argument("--json", action="store_true", help="print only the JSON report")
    args = p.parse_args()
    if not (1 <= args.requests <= 200 and 1 <= args.concurrency <= 16 and args.baseline >= 1):
        p.error("--requests must be 1-200, --concurrency 1-16, --baseline >= 1")
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        s, ld, h = report["sequential"], report["load"], report["health"]
        print(f"model: {report['model']}; patient: {report['slices']} slices of "
              f"{report['size']}px, zip {report['zip_mb']} MB")
        print(f"sequential ({s['uploads']} uploads): {s['throughput']:.3f} uploads/s, "
              f"p50 {s['latency_p50']:.2f} s")
        print(f"load ({report['requests']} uploads, {report['concurrency']} clients, "
              f"{report['server_concurrency']} model slot(s)): {ld['throughput']:.3f} uploads/s "
              f"= {ld['throughput_ratio_vs_sequential']:.2f}x sequential; "
              f"latency p50 {ld['latency_p50']:.2f} s, p95 {ld['latency_p95']:.2f} s")
        print(f"/health: idle p50 {h['idle_p50_ms']} ms p95 {h['idle_p95_ms']} ms; under load "
              f"p50 {h['load_p50_ms']} ms p95 {h['load_p95_ms']} ms "
              f"({h['load_p95_ratio_vs_idle']}x idle p95), {h['failures']} failed "
              f"of {h['probes']}")
        print(f"errors: {report['errors'] or 'none'}; machine load average "
              f"{report['load_average_1min']} on {os.cpu_count()} CPUs")
    return 1 if report["errors"] or report["health"]["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
