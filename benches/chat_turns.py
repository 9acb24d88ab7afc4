#!/usr/bin/env python3
"""Multi-turn chat with prefix reuse: each turn resends the whole conversation plus a short
new message (as coding agents and chat front-ends do); prints the time to first token of
every turn with the prefix cache, and of the same request with `cache_prompt: false` (cold),
and their ratio.

    python3 benches/chat_turns.py [--model F] [--history-tokens 2000] [--turns 4] [--server-args "..."]

Without --model the `small` synth preset (Q4_K) is written to the temp directory. The first
turn's history is about --history-tokens tokens long; every turn then adds a user message
and the assistant's answer (--max-tokens tokens, greedy). The goal of the prefix cache: a warm
turn's TTFT at most 20% of the same turn cold.
"""

import argparse
import http.client
import json
import os
import platform
import shlex
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "moe-node")
START_TIMEOUT_S = 300


def start(model, extra):
    p = subprocess.Popen([BIN, "serve", "--model", model, "--http", "127.0.0.1:0"] + extra,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + START_TIMEOUT_S
    while time.time() < deadline:
        line = p.stdout.readline()
        if line.startswith("http listening on "):
            return p, int(line.strip().rsplit(":", 1)[1])
        if not line:
            break
    p.kill()
    raise RuntimeError("the server did not start")


def turn(port, messages, max_tokens, cache):
    """(ttft s, answer text, usage) of one streamed greedy chat completion."""
    body = json.dumps({"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}, "cache_prompt": cache})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()[:300]
    ttft, text, usage = None, "", None
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            usage = chunk["usage"]
        for c in chunk.get("choices", []):
            delta = c.get("delta", {})
            piece = delta.get("content") or ""
            # The first chunk carrying a generated token (the role chunk comes at once).
            if ttft is None and (piece or c.get("token_ids") or delta.get("token_ids")):
                ttft = time.perf_counter() - t0
            text += piece
    conn.close()
    return ttft, text, usage


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--history-tokens", type=int, default=2000)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--server-args", default="")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "moe-node"], cwd=ROOT, check=True)
    model = a.model
    if not model:
        model = os.path.join(tempfile.gettempdir(), "moe-chat-turns-small-Q4_K.gguf")
        if not os.path.exists(model):
            subprocess.run([BIN, "synth", "--preset", "small", "--type", "Q4_K", "--out", model], check=True,
                           stdout=subprocess.DEVNULL)
    server, port = start(model, ["--ctx-size", str(a.history_tokens * 2 + 1024)] + shlex.split(a.server_args))
    try:
        # About two tokens per word of this filler in the synth vocabularies.
        words = ("the router sends each token hidden state to the nodes owning its experts " * 400).split()
        messages = [{"role": "system", "content": " ".join(words[: a.history_tokens // 2])}]
        print("| turn | prompt tokens | cached | TTFT warm s | TTFT cold s | warm / cold |")
        print("|---:|---:|---:|---:|---:|---:|")
        for i in range(1, a.turns + 1):
            messages.append({"role": "user", "content": f"Question {i}: what happens at step {i}?"})
            warm, answer, usage = turn(port, messages, a.max_tokens, True)
            cold, answer_cold, _ = turn(port, messages, a.max_tokens, False)
            assert answer == answer_cold, f"turn {i}: prefix reuse changed the answer"
            cached = usage["prompt_tokens_details"]["cached_tokens"]
            print(f"| {i} | {usage['prompt_tokens']} | {cached} | {warm:.3f} | {cold:.3f} | {warm / cold:.3f} |")
            messages.append({"role": "assistant", "content": answer})
    finally:
        server.kill()
    print(f"model: {model}; machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}")


if __name__ == "__main__":
    main()
