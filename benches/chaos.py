#!/usr/bin/env python3
"""Chaos benchmark: a router (`moe-node serve --placement`) and four expert nodes serving a
steady stream of greedy HTTP completions while a chaos thread kills (-9), stops (SIGSTOP) and
restarts random expert nodes, and a hostile client holds slowloris HTTP connections and sends
garbage to the expert ports. Prints requests sent, answered, failed (with reasons), the longest
stall (longest time with no request completing), and whether every completed output equals
the single-process output for the same prompt.

    python3 benches/chaos.py [--model F] [--duration 180] [--clients 3] [--no-replicas]

With replicas (default) every expert is owned by two nodes (e1,e2: 0-191; e3,e4: 192-383)
and chaos never takes both owners of a half down at once: the goal is zero failed requests
and zero wrong outputs. With --no-replicas (e1..e4 own a quarter each) a failure is expected
whenever a node is down; the goal is that each is a clear error within the step deadline
(30 s) and that nothing completed is wrong. Only 127.0.0.1 is used. Without --model the
`tiny` synth preset (Q8_0) is written to the temp directory.
"""

import argparse
import collections
import http.client
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "moe-node")
# How long a process may take to print its ready line, seconds.
START_TIMEOUT_S = 120
# The router's per-step deadline (STEP_TIMEOUT_MS) plus slack: a failure must come by then.
FAILURE_DEADLINE_S = 35
PROMPTS = [
    "The mixture of experts routes each token",
    "def fibonacci(n):",
    "Once upon a time in a small village",
    "SELECT name FROM users WHERE",
    "The capital of France is",
    "import numpy as np\n",
]
MAX_TOKENS = 24
SECRET = "chaos-benchmark-cluster-secret-0123456789"


def spawn(args, ready_prefix):
    """Starts moe-node with args; returns (process, the ready line's tail)."""
    p = subprocess.Popen([BIN] + args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"moe-node {' '.join(args[:2])} exited before it was ready")
        if line.startswith(ready_prefix):
            threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
            return p, line[len(ready_prefix):].strip()
    p.kill()
    raise RuntimeError("not ready in time")


class Expert:
    def __init__(self, name, shards, model, secret_file):
        self.name, self.shards, self.model, self.secret_file = name, shards, model, secret_file
        self.proc, self.addr, self.state = None, "127.0.0.1:0", "down"

    def start(self):
        args = ["--role", "expert", "--model", self.model, "--shards", self.shards, "--node", self.name,
                "--secret-file", self.secret_file, "--listen", self.addr, "--threads", "1"]
        self.proc, self.addr = spawn(args, "listening on ")
        self.state = "up"

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.state = "down"

    def stop(self):
        self.proc.send_signal(signal.SIGSTOP)
        self.state = "stopped"

    def cont(self):
        self.proc.send_signal(signal.SIGCONT)
        self.state = "up"


def complete(port, prompt, timeout):
    """(ok, text or reason) of one greedy completion."""
    body = json.dumps({"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            try:
                reason = json.loads(data)["error"]["message"]
            except Exception:
                reason = data[:200].decode(errors="replace")
            return False, f"HTTP {resp.status}: {reason}"
        return True, json.loads(data)["choices"][0]["text"]
    except Exception as e:
        return False, f"{type(e).__name__}: {e}"
    finally:
        conn.close()


def serve(model, extra):
    p, addr = spawn(["serve", "--model", model, "--http", "127.0.0.1:0"] + extra, "http listening on ")
    return p, int(addr.rsplit(":", 1)[1])


def hostile(http_port, experts, stop):
    """Slowloris connections to the HTTP port and garbage to the expert ports."""
    held = []
    while not stop.is_set():
        try:
            if len(held) < 20:
                s = socket.create_connection(("127.0.0.1", http_port), timeout=2)
                s.send(b"POST /v1/completions HTTP/1.1\r\n")
                held.append(s)
            for s in list(held):
                try:
                    s.send(b"X")
                except OSError:
                    held.remove(s)
            e = random.choice(experts)
            if e.state == "up":
                host, eport = e.addr.rsplit(":", 1)
                g = socket.create_connection((host, int(eport)), timeout=2)
                g.send(os.urandom(random.choice([3, 64, 5000])))
                g.close()
        except OSError:
            pass
        time.sleep(1.0)
    for s in held:
        s.close()


def chaos(experts, pairs, stop, log):
    """Every few seconds: kill -9 + restart, or SIGSTOP + SIGCONT, one random node (never both
    owners of a replica pair at once)."""
    rng = random.Random(7)
    while not stop.wait(rng.uniform(4, 8)):
        candidates = [e for e in experts if e.state == "up"
                      and all(experts[j].state == "up" for j in pairs.get(e.name, []))]
        if not candidates:
            continue
        e = rng.choice(candidates)
        if rng.random() < 0.5:
            log.append((time.time(), f"kill -9 {e.name}"))
            e.kill()
            stop.wait(rng.uniform(2, 6))
            e.start()
            log.append((time.time(), f"restart {e.name}"))
        else:
            log.append((time.time(), f"SIGSTOP {e.name}"))
            e.stop()
            stop.wait(rng.uniform(2, 8))
            e.cont()
            log.append((time.time(), f"SIGCONT {e.name}"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--duration", type=float, default=180)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--no-replicas", action="store_true")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "moe-node"], cwd=ROOT, check=True)
    tmp = tempfile.mkdtemp(prefix="moe-chaos-")
    model = a.model or os.path.join(tmp, "tiny-Q8_0.gguf")
    if not a.model:
        subprocess.run([BIN, "synth", "--preset", "tiny", "--type", "Q8_0", "--out", model], check=True,
                       stdout=subprocess.DEVNULL)
    secret = os.path.join(tmp, "secret")
    with open(secret, "w") as f:
        f.write(SECRET)

    # The single-process reference for every prompt.
    single, port = serve(model, [])
    reference = {}
    for prompt in PROMPTS:
        ok, text = complete(port, prompt, 120)
        assert ok, text
        reference[prompt] = text
    single.kill()
    single.wait()

    if a.no_replicas:
        specs = [("e1", "0-95"), ("e2", "96-191"), ("e3", "192-287"), ("e4", "288-383")]
        pairs = {}
    else:
        specs = [("e1", "0-191"), ("e2", "0-191"), ("e3", "192-383"), ("e4", "192-383")]
        pairs = {"e1": [1], "e2": [0], "e3": [3], "e4": [2]}
    experts = [Expert(n, s, model, secret) for n, s in specs]
    for e in experts:
        e.start()
    placement = os.path.join(tmp, "p.toml")
    with open(placement, "w") as f:
        for e in experts:
            f.write(f'[[node]]\nname = "{e.name}"\naddr = "{e.addr}"\nshards = "{e.shards}"\n\n')
    router, port = serve(model, ["--placement", placement, "--secret-file", secret])

    stop = threading.Event()
    lock = threading.Lock()
    stats = {"sent": 0, "answered": 0, "failed": 0, "wrong": 0, "late_failures": 0}
    reasons = collections.Counter()
    completions = []
    chaos_log = []

    def client(i):
        rng = random.Random(i)
        while not stop.is_set():
            prompt = rng.choice(PROMPTS)
            t0 = time.time()
            with lock:
                stats["sent"] += 1
            ok, text = complete(port, prompt, FAILURE_DEADLINE_S * 3)
            t1 = time.time()
            with lock:
                completions.append(t1)
                if ok:
                    stats["answered"] += 1
                    if text != reference[prompt]:
                        stats["wrong"] += 1
                else:
                    stats["failed"] += 1
                    reasons[text[:160]] += 1
                    if t1 - t0 > FAILURE_DEADLINE_S:
                        stats["late_failures"] += 1

    started = time.time()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    threads.append(threading.Thread(target=chaos, args=(experts, pairs, stop, chaos_log)))
    threads.append(threading.Thread(target=hostile, args=(port, experts, stop), daemon=True))
    for t in threads:
        t.start()
    time.sleep(a.duration)
    stop.set()
    for t in threads[:-1]:
        t.join()
    ended = time.time()
    router.kill()
    for e in experts:
        if e.state == "stopped":
            e.cont()
        if e.proc:
            e.proc.kill()

    times = sorted([started] + completions + [ended])
    stall = max(b - a_ for a_, b in zip(times, times[1:]))
    mode = "no replicas" if a.no_replicas else "replicas (every expert on 2 nodes)"
    print(f"| cluster | duration s | clients | chaos events | sent | answered | failed | wrong outputs | failures later than {FAILURE_DEADLINE_S} s | longest stall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {mode} | {ended - started:.0f} | {a.clients} | {len(chaos_log)} | {stats['sent']} | {stats['answered']} | "
          f"{stats['failed']} | {stats['wrong']} | {stats['late_failures']} | {stall:.1f} |")
    if reasons:
        print("\nfailures by reason:")
        for r, n in reasons.most_common():
            print(f"- {n} x {r}")
    print("\nchaos: " + ", ".join(f"+{t - started:.0f}s {what}" for t, what in chaos_log))
    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}")
    sys.exit(1 if stats["wrong"] or (not a.no_replicas and stats["failed"]) else 0)


if __name__ == "__main__":
    main()
