"""Load on `distill serve`: requests/s, latency and tokens/s with 1 vs N concurrent clients, a short
request beside a long stream, and streams that clients abandon.

Run: .venv/bin/python benchmarks/serve_load.py --clients 4 --seconds 90     (about 5 min on 2 cores)

The server runs in this process on a free port with the real model (default SmolLM2-135M-Instruct,
fp32, CPU). Phases, one after the other:
1. load: each client thread sends short chat prompts back to back (max_tokens 32, greedy, every
   other request streamed) until the time is up; one client first, then `--clients`, so the
   result shows what batching concurrent requests buys. Latency is the whole request, from send
   to the last byte.
2. head of line: a 4-token request alone, `--probes` times (`short_p95_idle_ms`), then the same
   while a 300-token stream is running (`short_p95_under_long_ms`; a probe counts only if the
   stream was still running when it was answered).
3. abandoned streams: `--abandon` times, a client opens a 300-token stream, reads its first piece
   and disconnects; the next 4-token request must be answered within 3 × `short_p95_idle_ms`
   (`abandoned_streams_recovered` of `abandoned_streams`).
Writes benchmarks/results/serve_load.json and prints it as one JSON line.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import socket
import threading
import time
import urllib.request

from common import write_result

from distill.serve.server import make_server

PROMPTS = ["What is the capital of France?", "Name three primary colours.", "What is 12 times 7?",
           "Give me a synonym for happy.", "Why is the sky blue?", "Write a haiku about rain.",
           "What does a compiler do?", "How many legs does a spider have?", "Define photosynthesis.",
           "Suggest a name for a cat.", "What is the boiling point of water?",
           "Translate 'thank you' to French."]


def one_request(url: str, prompt: str, max_tokens: int, stream: bool) -> int:
    """Send one chat completion; the number of completion tokens it returned."""
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": stream, "stream_options": {"include_usage": True} if stream else None}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=300) as resp:
        if not stream:
            return json.loads(resp.read())["usage"]["completion_tokens"]
        usage = None
        for line in resp:
            data = line.decode().strip().removeprefix("data: ")
            if data.startswith("{") and '"usage"' in data:
                usage = json.loads(data).get("usage") or usage
        return usage["completion_tokens"]


def load_phase(url: str, clients: int, seconds: float, max_tokens: int) -> dict[str, float]:
    """`clients` threads sending requests back to back for `seconds`; counts, latencies, tokens/s."""
    latencies: list[float] = []
    tokens, failed = [0], [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(k: int) -> None:
        i = k
        while time.monotonic() < deadline:
            start = time.perf_counter()
            try:
                n = one_request(url, PROMPTS[i % len(PROMPTS)], max_tokens, stream=i % 2 == 1)
            except Exception:  # counted, not raised: a load test reports failures
                with lock:
                    failed[0] += 1
            else:
                with lock:
                    latencies.append((time.perf_counter() - start) * 1000)
                    tokens[0] += n
            i += clients

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {"requests": len(latencies), "failed": failed[0], "requests_per_s": len(latencies) / elapsed,
            "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
            "tokens_per_s": tokens[0] / elapsed, "clients": clients, "seconds": elapsed}


SHORT = "What is 12 times 7?"
LONG = "Write a long, detailed story about a dragon who learns to bake bread, chapter by chapter."


def timed(url: str, prompt: str, max_tokens: int) -> float:
    start = time.perf_counter()
    one_request(url, prompt, max_tokens, stream=False)
    return (time.perf_counter() - start) * 1000


def open_stream(address: tuple[str, int], max_tokens: int) -> tuple[http.client.HTTPConnection, object]:
    """A streamed chat request whose first text piece has arrived."""
    conn = http.client.HTTPConnection(*address, timeout=300)
    body = {"messages": [{"role": "user", "content": LONG}], "max_tokens": max_tokens, "temperature": 0,
            "stream": True}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    while b'"delta": {"content"' not in resp.readline():
        pass
    return conn, resp


def head_of_line(server, probes: int, long_tokens: int) -> dict[str, float]:
    """p95 of a 4-token request alone and while a long stream runs."""
    idle = [timed(server.url, SHORT, 4) for _ in range(probes)]
    under: list[float] = []
    while len(under) < probes:
        conn, resp = open_stream(server.address, long_tokens)
        reader = threading.Thread(target=resp.read)  # the long stream runs to its end meanwhile
        reader.start()
        while reader.is_alive() and len(under) < probes:
            latency = timed(server.url, SHORT, 4)
            if reader.is_alive():  # answered while the long stream was still running
                under.append(latency)
        conn.close()
        reader.join()
    return {"short_p95_idle_ms": percentile(idle, 95), "short_p50_idle_ms": percentile(idle, 50),
            "short_p95_under_long_ms": percentile(under, 95), "short_p50_under_long_ms": percentile(under, 50),
            "short_probes": float(probes)}


def abandoned(server, times: int, long_tokens: int, bound_ms: float) -> dict[str, float]:
    """Clients that drop a long stream: is the next request served within `bound_ms`?"""
    recovered, latencies = 0, []
    for _ in range(times):
        conn, _ = open_stream(server.address, long_tokens)
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        latency = timed(server.url, SHORT, 4)
        latencies.append(latency)
        recovered += latency <= bound_ms
    return {"abandoned_streams": float(times), "abandoned_streams_recovered": float(recovered),
            "after_abandon_max_ms": max(latencies)}


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (NaN when there are no values)."""
    if not values:
        return float("nan")
    ranked = sorted(values)
    return ranked[max(math.ceil(q / 100 * len(ranked)) - 1, 0)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="builtin:smollm2-135m-instruct")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--baseline-clients", type=int, default=1,
                   help="clients of the comparison phase run first (0: skip it)")
    p.add_argument("--seconds", type=float, default=90.0, help="length of each load phase")
    p.add_argument("--probes", type=int, default=20, help="4-token requests per head-of-line case")
    p.add_argument("--abandon", type=int, default=5, help="streams dropped by their client")
    p.add_argument("--long-tokens", type=int, default=300)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=8)
    args = p.parse_args()

    server = make_server(args.model, port=0, max_batch=args.max_batch,
                         max_tokens_limit=max(512, args.long_tokens))
    server.start_background()
    try:
        one_request(server.url, PROMPTS[0], args.max_tokens, stream=False)  # warm-up, not counted
        metrics: dict[str, float] = {}
        if args.baseline_clients:
            base = load_phase(server.url, args.baseline_clients, args.seconds, args.max_tokens)
            metrics |= {f"baseline_{k}": v for k, v in base.items()}
        metrics |= load_phase(server.url, args.clients, args.seconds, args.max_tokens)
        if metrics.get("baseline_requests_per_s"):
            metrics["speedup_requests_per_s"] = (metrics["requests_per_s"]
                                                 / metrics["baseline_requests_per_s"])
        metrics |= head_of_line(server, args.probes, args.long_tokens)
        metrics["short_under_long_ratio"] = metrics["short_p95_under_long_ms"] / metrics["short_p95_idle_ms"]
        metrics |= abandoned(server, args.abandon, args.long_tokens, 3 * metrics["short_p95_idle_ms"])
    finally:
        server.shutdown()
    notes = (f"{args.model}, fp32 CPU, in-process server (Starlette + uvicorn, continuous batching), "
             f"greedy, max_tokens {args.max_tokens}, max_batch {args.max_batch}, every other request "
             f"streamed; head of line: 4-token requests vs a {args.long_tokens}-token stream")
    write_result("serve_load", metrics, {"notes": notes})


if __name__ == "__main__":
    main()
