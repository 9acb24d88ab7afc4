#!/usr/bin/env python3
"""Load benchmark of `moe-node serve`: N concurrent streaming clients, each sending requests
back to back; prints a markdown table of aggregate generated tokens/s and p50/p99
time-to-first-token and inter-token latency per concurrency level, then the machine.

    python3 benches/serve_load.py [--model FILE] [--clients 1,4,16] [--requests 4] [--max-tokens 64]
    python3 benches/serve_load.py --base-url http://HOST:PORT   # an already running server

Without --base-url it builds `moe-node` (release) and starts
`moe-node serve --model FILE --http 127.0.0.1:0` (without --model: the embedded tiny
Kimi-K2.5-shaped model), extra server flags via --server-args. Every request is a streamed
/v1/completions with temperature 0 and `ignore_eos`, so each generates exactly --max-tokens
tokens. TTFT is from sending the request to the first event carrying a token; inter-token
latency is the gap between consecutive token events divided by the tokens the later carries.
Uses only the standard library (raw HTTP + SSE), so the client costs little CPU.
"""

import argparse
import http.client
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# How long the server may take to print `http listening on`, seconds.
SERVER_START_TIMEOUT_S = 120
PROMPT = "The mixture of experts routes each token to eight of 384 experts. " * 2


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def one_request(host, port, max_tokens, api_key):
    """(ttft s, [inter-token gaps s], tokens) of one streamed completion."""
    body = json.dumps({"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True})
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    conn = http.client.HTTPConnection(host, port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body=body, headers=headers)
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    ttft, last, gaps, tokens = None, None, [], 0
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        ev = json.loads(data)
        if "error" in ev:
            raise RuntimeError(ev["error"]["message"])
        n = sum(len(c.get("token_ids") or []) for c in ev.get("choices", []))
        if n == 0:
            continue
        now = time.perf_counter()
        if ttft is None:
            ttft = now - t0
        else:
            gaps.extend([(now - last) / n] * n)
        last = now
        tokens += n
    conn.close()
    return ttft, gaps, tokens


def run_level(host, port, clients, requests, max_tokens, api_key):
    ttfts, gaps, tokens, errors = [], [], [0], []
    lock = threading.Lock()

    def client():
        for _ in range(requests):
            try:
                t, g, n = one_request(host, port, max_tokens, api_key)
            except Exception as e:  # reported in the table's last column
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                ttfts.append(t)
                gaps.extend(g)
                tokens[0] += n

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "requests": clients * requests,
        "tokens": tokens[0],
        "wall": wall,
        "tps": tokens[0] / wall,
        "ttft50": percentile(ttfts, 50) * 1000,
        "ttft99": percentile(ttfts, 99) * 1000,
        "itl50": percentile(gaps, 50) * 1000,
        "itl99": percentile(gaps, 99) * 1000,
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
    }


def start_server(args):
    bin_path = args.bin
    if not bin_path:
        print("== building moe-node (release)", file=sys.stderr)
        subprocess.run(["cargo", "build", "--release", "-p", "moe-node", "--manifest-path", os.path.join(ROOT, "Cargo.toml")], check=True, stdout=sys.stderr)
        bin_path = os.path.join(ROOT, "target", "release", "moe-node")
    cmd = [bin_path, "serve", "--http", "127.0.0.1:0"] + (["--model", args.model] if args.model else []) + shlex.split(args.server_args)
    print("== " + " ".join(cmd), file=sys.stderr)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("http listening on "):
            return proc, "http://" + line.split()[-1]
    proc.kill()
    raise SystemExit("the server did not start")


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", help="benchmark this server instead of starting one")
    ap.add_argument("--model", help="GGUF to serve (default: the embedded tiny model)")
    ap.add_argument("--bin", help="moe-node binary (default: build target/release/moe-node)")
    ap.add_argument("--server-args", default="", help="extra flags for `moe-node serve`")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--clients", default="1,4,16", help="concurrency levels, comma-separated")
    ap.add_argument("--requests", type=int, default=4, help="requests per client per level")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request")
    a = ap.parse_args()

    proc = None
    base = a.base_url
    if not base:
        proc, base = start_server(a)
    try:
        u = urllib.parse.urlparse(base)
        one_request(u.hostname, u.port, 4, a.api_key)  # warm-up: page in the weights
        rows = [run_level(u.hostname, u.port, int(c), a.requests, a.max_tokens, a.api_key) for c in a.clients.split(",")]
    finally:
        if proc:
            proc.kill()
            proc.wait()
    print(f"\nmoe-node serve load: {a.max_tokens} tokens per request, {a.requests} requests per client, model {a.model or '(embedded tiny)'}\n")
    print("| clients | requests | tokens | wall s | aggregate tok/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['tokens']} | {r['wall']:.2f} | {r['tps']:.1f} | {r['ttft50']:.1f} | {r['ttft99']:.1f} | {r['itl50']:.2f} | {r['itl99']:.2f} | {r['errors']} |")
    print(f"\nmachine: {machine()}")
    bad = [r for r in rows if r["errors"]]
    if bad:
        print(f"first error: {bad[0]['first_error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
