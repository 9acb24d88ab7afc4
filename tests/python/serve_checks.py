#!/usr/bin/env python3
"""Checks a running `moe-node serve` with the official `openai` client (and raw HTTP where the
client cannot send what a check needs). Exits non-zero on the first failure.

    python3 tests/python/serve_checks.py --base-url http://127.0.0.1:PORT/v1 \
        --expect expect.json [--api-key KEY] CHECK...

CHECKs: models, greedy, chat, stop, concurrent, bad_requests, auth, disconnect, queue_full,
batching (a router started with --metrics-addr: steps per MoE layer from /metrics).
`expect.json` holds the fixture's `prompt`, `greedy_text`, `greedy_tokens`, and the server's
`ctx_size` and `max_tokens_limit`. `disconnect` and `queue_full` need a server started with
`--max-active-sequences 1 --admission-queue 1`.
"""

import argparse
import concurrent.futures
import http.client
import json
import sys
import time
import urllib.parse

import openai

# How long a freed sequence may take to leave /health's count, seconds.
FREE_DEADLINE_S = 5.0


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


class Server:
    def __init__(self, base_url, api_key, expect):
        self.base_url = base_url.rstrip("/")
        u = urllib.parse.urlparse(self.base_url)
        self.host, self.port, self.prefix = u.hostname, u.port, u.path  # prefix = /v1
        self.api_key = api_key
        self.expect = expect
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key or "none", max_retries=0, timeout=120)
        self.model = self.client.models.list().data[0].id

    def raw(self, method, path, body=None, headers=None):
        """(status, parsed JSON or text) of one request on a fresh connection."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        h.update(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read().decode("utf-8", "replace")
        conn.close()
        try:
            return r.status, json.loads(data)
        except json.JSONDecodeError:
            return r.status, data

    def health(self):
        return self.raw("GET", "/health")

    def open_stream(self, body):
        """A raw streaming completion: (connection, response) after the headers arrived."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        conn.request("POST", self.prefix + "/completions", body=json.dumps(dict(body, stream=True)), headers=h)
        return conn, conn.getresponse()


def read_sse_events(resp, n):
    """Reads n `data:` events from a raw SSE response."""
    got = []
    while len(got) < n:
        line = resp.readline()
        check(line, "the stream ended early")
        line = line.decode().strip()
        if line.startswith("data: "):
            got.append(line[len("data: "):])
    return got


def stream_completion(srv, **kw):
    """(text, token ids, finish_reason, seconds to the first text) of a streamed completion."""
    t0 = time.monotonic()
    text, ids, finish, ttft = "", [], None, None
    for chunk in srv.client.completions.create(model=srv.model, stream=True, **kw):
        for c in chunk.choices:
            if c.text and ttft is None:
                ttft = time.monotonic() - t0
            text += c.text or ""
            ids += getattr(c, "token_ids", None) or []
            finish = c.finish_reason or finish
    return text, ids, finish, ttft


def error_object(status, body, want_status, what):
    check(status == want_status, f"{what}: status {status}, want {want_status}: {body}")
    check(isinstance(body, dict) and isinstance(body.get("error"), dict), f"{what}: no OpenAI error object: {body}")
    e = body["error"]
    check(isinstance(e.get("message"), str) and e["message"] and isinstance(e.get("type"), str), f"{what}: malformed error object {e}")
    return e


# --- checks -------------------------------------------------------------------------------


def check_models(srv):
    models = srv.client.models.list().data
    check(len(models) == 1 and models[0].id, f"models: {models}")
    status, body = srv.health()
    check(status == 200 and body["status"] == "ok", f"health: {status} {body}")


def check_greedy(srv):
    e = srv.expect
    text, ids, finish, _ = stream_completion(srv, prompt=e["prompt"], temperature=0, max_tokens=16)
    check(ids == e["greedy_tokens"], f"greedy stream tokens {ids} != fixture {e['greedy_tokens']}")
    check(text == e["greedy_text"], f"greedy stream text {text!r} != fixture {e['greedy_text']!r}")
    check(finish == "length", f"greedy stream finish_reason {finish}")
    r = srv.client.completions.create(model=srv.model, prompt=e["prompt"], temperature=0, max_tokens=16)
    check(r.choices[0].text == e["greedy_text"], f"greedy non-stream text {r.choices[0].text!r}")
    check(r.choices[0].finish_reason == "length", f"non-stream finish_reason {r.choices[0].finish_reason}")
    u = r.usage
    check((u.prompt_tokens, u.completion_tokens, u.total_tokens) == (len(e["prompt_tokens"]), 16, len(e["prompt_tokens"]) + 16), f"usage {u}")
    # Token ids as the prompt give the same continuation.
    r = srv.client.completions.create(model=srv.model, prompt=e["prompt_tokens"], temperature=0, max_tokens=16)
    check(r.choices[0].text == e["greedy_text"], f"token-id prompt text {r.choices[0].text!r}")
    # Streaming usage chunk.
    chunks = list(srv.client.completions.create(model=srv.model, prompt=e["prompt"], temperature=0, max_tokens=4, stream=True, stream_options={"include_usage": True}))
    check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4, f"stream usage chunk {chunks[-1]}")


def check_chat(srv):
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a prime."}]
    r = srv.client.chat.completions.create(model=srv.model, messages=msgs, temperature=0, max_tokens=12)
    c = r.choices[0]
    check(c.message.role == "assistant" and isinstance(c.message.content, str), f"chat message {c.message}")
    check(c.finish_reason in ("stop", "length"), f"chat finish_reason {c.finish_reason}")
    check(r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 10, f"chat usage {r.usage}")
    streamed, finish, roles = "", None, []
    for chunk in srv.client.chat.completions.create(model=srv.model, messages=msgs, temperature=0, max_tokens=12, stream=True):
        for ch in chunk.choices:
            roles += [ch.delta.role] if ch.delta.role else []
            streamed += ch.delta.content or ""
            finish = ch.finish_reason or finish
    check(roles == ["assistant"], f"chat stream roles {roles}")
    check(streamed == c.message.content and finish == c.finish_reason, f"chat stream {streamed!r}/{finish} != {c.message.content!r}/{c.finish_reason}")
    # Content parts are accepted.
    r2 = srv.client.chat.completions.create(model=srv.model, messages=[msgs[0], {"role": "user", "content": [{"type": "text", "text": "Name a prime."}]}], temperature=0, max_tokens=12)
    check(r2.choices[0].message.content == c.message.content, "content parts give another answer than the same text")


def check_stop(srv):
    e = srv.expect
    full = e["greedy_text"]
    # A stop string from the middle of the greedy text: the answer is what comes before it.
    stop = next(full[i:i + 2] for i in range(3, len(full) - 2) if full[i:i + 2].strip() and full.find(full[i:i + 2]) == i)
    want = full[: full.find(stop)]
    for stream in (False, True):
        if stream:
            text, _, finish, _ = stream_completion(srv, prompt=e["prompt"], temperature=0, max_tokens=16, stop=[stop, "\u2603never"])
        else:
            c = srv.client.completions.create(model=srv.model, prompt=e["prompt"], temperature=0, max_tokens=16, stop=stop).choices[0]
            text, finish = c.text, c.finish_reason
        check(text == want and finish == "stop", f"stop {stop!r} (stream={stream}): {text!r}/{finish}, want {want!r}/stop")


def concurrent_requests(e):
    """16 different requests: greedy and seeded sampling, several prompts and lengths."""
    prompts = e["case_prompts"]
    reqs = []
    for i in range(16):
        kw = dict(prompt=prompts[i % len(prompts)], max_tokens=8 + (i * 5) % 24, extra_body={"ignore_eos": i % 3 == 0})
        if i % 2 == 0:
            kw["temperature"] = 0
        else:
            kw.update(temperature=0.9, seed=1000 + i, top_p=0.95, extra_body=dict(kw["extra_body"], top_k=40 + i, min_p=0.01))
        reqs.append(kw)
    return reqs


def check_concurrent(srv):
    reqs = concurrent_requests(srv.expect)
    alone = [stream_completion(srv, **kw)[:3] for kw in reqs]
    spans = []

    def timed(kw):
        t0 = time.monotonic()
        r = stream_completion(srv, **kw)[:3]
        spans.append((t0, time.monotonic()))
        return r

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(reqs)) as pool:
        together = list(pool.map(timed, reqs))
    for i, (a, t) in enumerate(zip(alone, together)):
        check(a == t, f"request {i} ({reqs[i]}): concurrent {t} != alone {a}")
        check(len(a[1]) >= 1, f"request {i} generated nothing")
    overlap = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    check(overlap >= 8, f"only {overlap} requests overlapped in time")
    print(f"concurrent: 16 requests, up to {overlap} at once, each gave exactly its tokens alone")


def layer_steps(srv):
    """{layer: MoE layer steps so far} from the router's /metrics."""
    status, text = srv.raw("GET", "/metrics")
    check(status == 200 and isinstance(text, str), f"/metrics: {status} {str(text)[:200]}")
    steps = {}
    for line in text.splitlines():
        if line.startswith("moe_layer_step_seconds_count{"):
            labels, value = line.rsplit(" ", 1)
            layer = labels.split('layer="', 1)[1].split('"', 1)[0]
            steps[layer] = float(value)
    check(steps, "no moe_layer_step_seconds_count in /metrics")
    return steps


def check_batching(srv):
    """16 concurrent requests share steps: each MoE layer runs far fewer steps than tokens."""
    n, tokens = 16, 16
    before = layer_steps(srv)
    kw = dict(prompt=srv.expect["prompt"], temperature=0, max_tokens=tokens, extra_body={"ignore_eos": True})
    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(lambda _: stream_completion(srv, **kw), range(n)))
    check(all(len(r[1]) == tokens for r in results), "a request generated another number of tokens")
    after = layer_steps(srv)
    deltas = {l: after[l] - before.get(l, 0) for l in after}
    alone = n * tokens  # one prompt step and tokens-1 decode steps per request, one at a time
    worst = max(deltas.values())
    check(len(set(deltas.values())) == 1, f"MoE layers ran different step counts: {deltas}")
    check(worst <= alone / 4, f"{n} concurrent requests took {worst:.0f} steps per MoE layer; one at a time takes {alone}")
    print(f"batching: {n} x {tokens} tokens in {worst:.0f} steps per MoE layer (one at a time: {alone})")


def check_bad_requests(srv):
    e, p = srv.expect, srv.prefix
    cases = [
        ("malformed JSON", "/completions", '{"prompt": "x", "max_tokens": ', 400),
        ("max_tokens of the wrong type", "/completions", {"prompt": "x", "max_tokens": "ten"}, 400),
        ("temperature of the wrong type", "/completions", {"prompt": "x", "temperature": "hot"}, 400),
        ("stop of the wrong type", "/completions", {"prompt": "x", "stop": 7}, 400),
        ("messages of the wrong type", "/chat/completions", {"messages": "hi"}, 400),
        ("message role missing", "/chat/completions", {"messages": [{"content": "hi"}]}, 400),
        ("prompt missing", "/completions", {"max_tokens": 3}, 400),
        ("JSON that is not an object", "/completions", "[1, 2]", 400),
        ("n = 9 (over N_MAX)", "/completions", {"prompt": "x", "n": 9}, 400),
        ("negative temperature", "/completions", {"prompt": "x", "temperature": -1}, 400),
        ("max_tokens over the limit", "/completions", {"prompt": "x", "max_tokens": e["max_tokens_limit"] + 1}, 400),
        ("prompt longer than the context", "/completions", {"prompt": [65] * (e["ctx_size"] + 8), "max_tokens": 1}, 400),
        ("prompt text longer than the context", "/completions", {"prompt": "The quick brown fox. " * e["ctx_size"], "max_tokens": 1}, 400),
        ("chat longer than the context", "/chat/completions", {"messages": [{"role": "user", "content": "lorem ipsum " * e["ctx_size"]}]}, 400),
        ("token id outside the vocabulary", "/completions", {"prompt": [10 ** 9]}, 400),
        ("oversized body", "/completions", json.dumps({"prompt": "x" * (5 << 20)}), 413),
        ("unknown route", "/nothing", {}, 404),
    ]
    for what, path, body, want in cases:
        status, resp = srv.raw("POST", p + path, body)
        err = error_object(status, resp, want, what)
        if "max_tokens over" in what:
            check(err.get("param") == "max_tokens", f"{what}: param {err.get('param')}")
        if "longer than the context" in what:
            check(err.get("code") == "context_length_exceeded", f"{what}: code {err.get('code')}")
    # Unknown fields are ignored, as OpenAI does.
    status, resp = srv.raw("POST", p + "/completions", {"prompt": "x", "max_tokens": 2, "temperature": 0, "no_such_field": [1]})
    check(status == 200 and resp["usage"]["completion_tokens"] >= 1, f"unknown field: {status} {resp}")
    # The official client maps the errors to its exceptions.
    try:
        srv.client.completions.create(model=srv.model, prompt="x", max_tokens=e["max_tokens_limit"] + 1)
        raise Failure("max_tokens over the limit was accepted")
    except openai.BadRequestError as ex:
        check(ex.status_code == 400, f"client error {ex}")
    status, body = srv.health()
    check(status == 200, f"unhealthy after bad requests: {status} {body}")


def check_auth(srv):
    check(srv.api_key, "auth needs --api-key")
    bad = openai.OpenAI(base_url=srv.base_url, api_key="wrong-key", max_retries=0)
    try:
        bad.completions.create(model=srv.model, prompt="x", max_tokens=1)
        raise Failure("a wrong API key was accepted")
    except openai.AuthenticationError:
        pass
    status, body = srv.raw("POST", srv.prefix + "/completions", {"prompt": "x"}, headers={"Authorization": ""})
    error_object(status, body, 401, "missing API key")
    r = srv.client.completions.create(model=srv.model, prompt="x", max_tokens=1, temperature=0)
    check(r.usage.completion_tokens == 1, "the right key does not work")


def wait_idle(srv, what):
    deadline = time.monotonic() + FREE_DEADLINE_S
    while time.monotonic() < deadline:
        _, h = srv.health()
        if h["active_sequences"] == 0 and h["queued_requests"] == 0:
            return time.monotonic()
        time.sleep(0.01)
    raise Failure(f"{what}: still busy after {FREE_DEADLINE_S} s: {srv.health()}")


def long_max_tokens(e):
    """max_tokens of a request that runs for seconds (it is cancelled long before it ends)."""
    return e["ctx_size"] - len(e["prompt_tokens"])


def check_disconnect(srv):
    e = srv.expect
    body = {"prompt": e["prompt"], "max_tokens": long_max_tokens(e), "temperature": 0, "ignore_eos": True}
    conn, resp = srv.open_stream(body)
    check(resp.status == 200, f"stream status {resp.status}")
    t0 = time.monotonic()
    read_sse_events(resp, 4)
    per_event = (time.monotonic() - t0) / 3
    _, h = srv.health()
    check(h["active_sequences"] == 1, f"the long request is not active: {h}")
    conn.sock.close()
    conn.close()
    t_close = time.monotonic()
    freed = wait_idle(srv, "after a disconnect")
    # Running to the end would take about one event per token.
    to_end = per_event * body["max_tokens"]
    check(freed - t_close < to_end / 2, f"freed after {freed - t_close:.2f} s: no sooner than running to the end (~{to_end:.1f} s)")
    print(f"disconnect: sequence freed {1000 * (freed - t_close):.0f} ms after the client left (running to the end: ~{to_end:.1f} s)")
    # The single slot is free: a new request runs at once.
    text, ids, finish, _ = stream_completion(srv, prompt=e["prompt"], temperature=0, max_tokens=16)
    check(ids == e["greedy_tokens"], "after a disconnect the next request gives other tokens")
    # A non-streamed request whose client leaves is freed too.
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=60)
    h = {"Content-Type": "application/json"}
    if srv.api_key:
        h["Authorization"] = f"Bearer {srv.api_key}"
    conn.request("POST", srv.prefix + "/completions", body=json.dumps(body), headers=h)
    time.sleep(0.2)
    _, hh = srv.health()
    check(hh["active_sequences"] == 1, f"the non-streamed request is not active: {hh}")
    conn.sock.close()
    conn.close()
    wait_idle(srv, "after a non-streamed client left")


def check_queue_full(srv):
    e = srv.expect
    body = {"prompt": e["prompt"], "max_tokens": long_max_tokens(e), "temperature": 0, "ignore_eos": True}
    running, resp = srv.open_stream(body)  # takes the one sequence slot
    read_sse_events(resp, 2)
    waiting, resp2 = srv.open_stream(body)  # waits in the one-place queue
    check(resp2.status == 200, f"queued stream status {resp2.status}")
    _, h = srv.health()
    check(h["active_sequences"] == 1 and h["queued_requests"] == 1, f"not one running and one queued: {h}")
    status, body3 = srv.raw("POST", srv.prefix + "/completions", {"prompt": "x", "max_tokens": 1})
    err = error_object(status, body3, 429, "full queue")
    check(err.get("code") == "queue_full", f"full queue code {err.get('code')}")
    try:
        srv.client.completions.create(model=srv.model, prompt="x", max_tokens=1)
        raise Failure("a request was accepted while the queue was full")
    except openai.RateLimitError:
        pass
    for c in (running, waiting):
        c.sock.close()
        c.close()
    wait_idle(srv, "after the queue drained")
    r = srv.client.completions.create(model=srv.model, prompt=e["prompt"], temperature=0, max_tokens=16)
    check(r.choices[0].text == e["greedy_text"], "after the queue drained the answer changed")


CHECKS = {
    "models": check_models,
    "greedy": check_greedy,
    "chat": check_chat,
    "stop": check_stop,
    "concurrent": check_concurrent,
    "bad_requests": check_bad_requests,
    "auth": check_auth,
    "disconnect": check_disconnect,
    "queue_full": check_queue_full,
    "batching": check_batching,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--expect", required=True)
    ap.add_argument("--api-key")
    ap.add_argument("checks", nargs="+", choices=sorted(CHECKS))
    a = ap.parse_args()
    with open(a.expect) as f:
        expect = json.load(f)
    srv = Server(a.base_url, a.api_key, expect)
    for name in a.checks:
        t0 = time.monotonic()
        try:
            CHECKS[name](srv)
        except Failure as ex:
            print(f"FAIL {name}: {ex}", file=sys.stderr)
            return 1
        print(f"ok {name} ({time.monotonic() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
