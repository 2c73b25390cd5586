"""Load on `distill serve`: requests/s, latency and tokens/s with 1 vs N concurrent clients.

Run: .venv/bin/python benchmarks/serve_load.py --clients 4 --seconds 60     (about 2.5 min on 2 cores)

The server runs in this process on a free port with the real model (default SmolLM2-135M-Instruct,
fp32, CPU). Each client thread sends short chat prompts back to back (max_tokens 32, greedy,
every other request streamed) until the time is up; a baseline phase with one client runs first, so
the result shows what batching concurrent requests buys. Latency is the whole request, from send
to the last byte. Writes benchmarks/results/serve_load.json and prints it as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
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
    body = {"model": "bench", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
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
    p.add_argument("--seconds", type=float, default=60.0, help="length of each phase")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=8)
    args = p.parse_args()

    server = make_server(args.model, port=0, max_batch=args.max_batch)
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
    finally:
        server.shutdown()
    notes = (f"{args.model}, fp32 CPU, in-process server, greedy, max_tokens {args.max_tokens}, "
             f"max_batch {args.max_batch}, every other request streamed")
    write_result("serve_load", metrics, {"notes": notes})


if __name__ == "__main__":
    main()
