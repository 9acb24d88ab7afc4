#!/usr/bin/env python3
"""Agent API checks against a running `moe-node serve` (issue #15), with the official
`openai` and `anthropic` clients. Exits non-zero on the first failure; prints one line per
check passed, and writes what the Rust side recomputes to --out.

    python3 tests/python/agent_checks.py --base-url http://127.0.0.1:PORT \
        --out result.json CHECK...

CHECKs:
  tools_openai     forced tool call (named function) -> tool_calls whose arguments validate
                   against the tool's schema -> tool result sent back -> a final text answer;
                   streamed and not (the streamed deltas join into the non-streamed answer)
  tools_required   tool_choice "required" with two tools: valid call(s) of known tools
  tools_anthropic  the same round trip through /v1/messages (tool_choice tool), streamed and not
  text_anthropic   a plain /v1/messages answer, streamed and not, equal (greedy)
  logprobs         greedy completion with logprobs=5 over token ids; written to --out for the
                   Rust side to compare with `moe-node logits`; chat logprobs on the same output
  n                n=3 with a seed: reproducible, choice 0 equals n=1 with the same seed, usage
                   sums the choices, and the choices are not all equal
  json_schema      response_format json_schema / json_object: output parses and validates,
                   for several seeds, streamed and not
  bad_requests     tools on unsupported combinations answer 4xx with an error object
"""

import argparse
import json
import sys

import anthropic
import jsonschema
import openai

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"type": "string", "maxLength": 8}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a zone", "parameters": TIME}},
]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
# Budget of a forced call / a JSON answer, tokens (the constraint closes the document within it).
CALL_MAX_TOKENS = 160
ANSWER_MAX_TOKENS = 12
# Greedy decoding on /v1/messages (recent `anthropic` clients have no `temperature` argument).
GREEDY = {"temperature": 0}


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def user(text):
    return {"role": "user", "content": text}


def join_stream(chunks):
    """The choices of a streamed chat completion: content, tool calls, finish reason."""
    out = {}
    for ch in chunks:
        for c in ch.choices:
            o = out.setdefault(c.index, {"content": "", "calls": {}, "finish": None, "token_ids": []})
            d = c.delta
            if d.content:
                o["content"] += d.content
            for tc in d.tool_calls or []:
                call = o["calls"].setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                if tc.id:
                    call["id"] = tc.id
                if tc.function and tc.function.name:
                    call["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    call["arguments"] += tc.function.arguments
            if c.finish_reason:
                o["finish"] = c.finish_reason
            o["token_ids"] += (c.model_extra or {}).get("token_ids") or []
    return out


def valid_call(name, arguments, what):
    schema = {"get_weather": WEATHER, "get_time": TIME}.get(name)
    check(schema is not None, f"{what}: unknown function {name!r}")
    try:
        args = json.loads(arguments)
    except ValueError as e:
        raise Failure(f"{what}: arguments are not JSON ({e}): {arguments!r}")
    try:
        jsonschema.validate(args, schema)
    except jsonschema.ValidationError as e:
        raise Failure(f"{what}: arguments {args} do not validate: {e.message}")
    return args


def check_tools_openai(oa, _an, _out):
    msgs = [user("What is the weather in Paris?")]
    kw = dict(model="m", messages=msgs, tools=TOOLS, max_tokens=CALL_MAX_TOKENS, temperature=0,
              tool_choice={"type": "function", "function": {"name": "get_weather"}})
    r = oa.chat.completions.create(**kw)
    c = r.choices[0]
    check(c.finish_reason == "tool_calls", f"finish_reason {c.finish_reason!r}, message {c.message}")
    calls = c.message.tool_calls or []
    check(len(calls) == 1, f"one call of the named function, got {calls}")
    check(calls[0].function.name == "get_weather", f"named function called: {calls[0]}")
    check(calls[0].id, "the call has an id")
    valid_call(calls[0].function.name, calls[0].function.arguments, "forced call")
    # Streamed: the deltas join into the same call.
    s = join_stream(oa.chat.completions.create(stream=True, **kw))[0]
    check(s["finish"] == "tool_calls", f"streamed finish {s['finish']}")
    scall = s["calls"].get(0)
    check(scall and scall["name"] == "get_weather" and scall["id"] == calls[0].id
          and scall["arguments"] == calls[0].function.arguments,
          f"streamed call {s['calls']} equals {calls[0]}")
    check(s["token_ids"] == c.model_extra["token_ids"], "streamed token ids equal the non-streamed ones")
    # The client sends the result back; the model answers in text.
    msgs2 = msgs + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": calls[0].id, "type": "function",
             "function": {"name": calls[0].function.name, "arguments": calls[0].function.arguments}}]},
        {"role": "tool", "tool_call_id": calls[0].id, "content": json.dumps({"temperature": 21})},
    ]
    kw2 = dict(model="m", messages=msgs2, tools=TOOLS, tool_choice="none", max_tokens=ANSWER_MAX_TOKENS, temperature=0)
    r2 = oa.chat.completions.create(**kw2)
    c2 = r2.choices[0]
    check(c2.finish_reason in ("stop", "length") and isinstance(c2.message.content, str)
          and not c2.message.tool_calls, f"final answer in text: {c2}")
    check(r2.usage.prompt_tokens > r.usage.prompt_tokens, "the second turn's prompt holds the first turn and the result")
    s2 = join_stream(oa.chat.completions.create(stream=True, **kw2))[0]
    check(s2["content"] == c2.message.content and s2["finish"] == c2.finish_reason,
          f"streamed final answer {s2} equals {c2.message.content!r}")
    print(f"tools_openai: call {calls[0].function.arguments} -> answer {c2.message.content!r}")


def check_tools_required(oa, _an, _out):
    for seed in range(3):
        r = oa.chat.completions.create(model="m", messages=[user("Weather and time?")], tools=TOOLS,
                                       tool_choice="required", max_tokens=CALL_MAX_TOKENS, temperature=1, seed=seed)
        c = r.choices[0]
        check(c.finish_reason == "tool_calls", f"seed {seed}: finish {c.finish_reason}, {c.message}")
        for call in c.message.tool_calls:
            valid_call(call.function.name, call.function.arguments, f"seed {seed}")
    for seed in range(3):
        r = oa.chat.completions.create(model="m", messages=[user("Weather and time?")], tools=TOOLS,
                                       tool_choice="required", parallel_tool_calls=False,
                                       max_tokens=CALL_MAX_TOKENS, temperature=1, seed=seed)
        calls = r.choices[0].message.tool_calls or []
        check(len(calls) == 1, f"seed {seed}: parallel_tool_calls false gives one call: {calls}")
        valid_call(calls[0].function.name, calls[0].function.arguments, f"seed {seed}, one call")
    print("tools_required: calls of known tools with valid arguments; one call without parallel_tool_calls")


def blocks_of(msg):
    return [b.model_dump() for b in msg.content]


def check_tools_anthropic(_oa, an, _out):
    tools = [{"name": "get_weather", "description": "Weather in a city", "input_schema": WEATHER}]
    msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
    kw = dict(model="m", max_tokens=CALL_MAX_TOKENS, messages=msgs, tools=tools, extra_body=GREEDY,
              tool_choice={"type": "tool", "name": "get_weather"})
    m = an.messages.create(**kw)
    check(m.stop_reason == "tool_use", f"stop_reason {m.stop_reason}: {m}")
    uses = [b for b in m.content if b.type == "tool_use"]
    check(len(uses) == 1 and uses[0].name == "get_weather", f"one tool_use block: {m.content}")
    jsonschema.validate(uses[0].input, WEATHER)
    with an.messages.stream(**kw) as st:
        sm = st.get_final_message()
    check(sm.stop_reason == "tool_use" and blocks_of(sm) == blocks_of(m),
          f"streamed message {blocks_of(sm)} equals {blocks_of(m)}")
    msgs2 = msgs + [
        {"role": "assistant", "content": m.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "21 degrees"}]},
    ]
    kw2 = dict(model="m", max_tokens=ANSWER_MAX_TOKENS, messages=msgs2, tools=tools, extra_body=GREEDY,
               tool_choice={"type": "none"})
    m2 = an.messages.create(**kw2)
    check(m2.stop_reason in ("end_turn", "max_tokens") and all(b.type == "text" for b in m2.content),
          f"final answer in text: {m2}")
    with an.messages.stream(**kw2) as st:
        sm2 = st.get_final_message()
    check(blocks_of(sm2) == blocks_of(m2) and sm2.stop_reason == m2.stop_reason,
          f"streamed final {blocks_of(sm2)} equals {blocks_of(m2)}")
    check(m2.usage.input_tokens > m.usage.input_tokens and m2.usage.output_tokens > 0, f"usage {m2.usage}")
    print(f"tools_anthropic: {uses[0].input} -> {blocks_of(m2)}")


def check_text_anthropic(_oa, an, _out):
    kw = dict(model="m", max_tokens=8, extra_body=GREEDY, system="Be brief.",
              messages=[{"role": "user", "content": "Hello"}])
    m = an.messages.create(**kw)
    check(m.role == "assistant" and m.stop_reason in ("end_turn", "max_tokens"), f"{m}")
    with an.messages.stream(**kw) as st:
        text = "".join(st.text_stream)
        sm = st.get_final_message()
    whole = "".join(b.text for b in m.content if b.type == "text")
    check(text == whole and sm.stop_reason == m.stop_reason, f"streamed {text!r} equals {whole!r}")
    m3 = an.messages.create(stop_sequences=[whole[2:4]] if len(whole) >= 4 else ["\x00"], **kw)
    if len(whole) >= 4:
        check(m3.stop_reason == "stop_sequence" and m3.stop_sequence == whole[2:4], f"stop sequence: {m3}")
    try:
        an.messages.create(model="m", max_tokens=8, messages=[])
        raise Failure("empty messages accepted")
    except anthropic.BadRequestError as e:
        check(e.body.get("type") == "error" and e.body["error"]["type"] == "invalid_request_error", f"{e.body}")
    print(f"text_anthropic: {whole!r}")


def check_logprobs(oa, _an, out):
    expect = out["expect"]
    r = oa.completions.create(model="m", prompt=expect["prompt_tokens"], max_tokens=3, temperature=0, logprobs=5)
    c = r.choices[0]
    lp = c.logprobs
    check(lp and len(lp.token_logprobs) == 3 and len(lp.top_logprobs[0]) == 5, f"legacy logprobs: {lp}")
    ids = c.model_extra["token_ids"]
    out["completion"] = {"token_ids": ids, "token_logprobs": lp.token_logprobs,
                         "top_logprobs": [list(t.values()) for t in lp.top_logprobs]}
    # The greedy token is the most likely one.
    for i, t in enumerate(lp.top_logprobs):
        check(abs(max(t.values()) - lp.token_logprobs[i]) < 1e-6, f"position {i}: greedy token is the top one")
    rc = oa.chat.completions.create(model="m", messages=[user("Hi")], max_tokens=3, temperature=0,
                                    logprobs=True, top_logprobs=2)
    content = rc.choices[0].logprobs.content
    check(len(content) == len(rc.choices[0].model_extra["token_ids"]), "one chat logprob per token")
    for e in content:
        check(len(e.top_logprobs) == 2 and e.logprob <= 0 and e.top_logprobs[0].logprob >= e.logprob - 1e-6
              and bytes(e.bytes).decode("utf-8", "replace") is not None, f"chat logprob entry {e}")
    s = oa.chat.completions.create(model="m", messages=[user("Hi")], max_tokens=3, temperature=0,
                                   logprobs=True, top_logprobs=2, stream=True)
    streamed = [e.logprob for ch in s for c in ch.choices if c.logprobs for e in c.logprobs.content]
    check(streamed == [e.logprob for e in content], f"streamed logprobs {streamed} equal {[e.logprob for e in content]}")
    print(f"logprobs: completion {lp.token_logprobs}")


def check_n(oa, _an, _out):
    kw = dict(model="m", messages=[user("Tell me a story")], max_tokens=6, temperature=1, seed=7)
    a = oa.chat.completions.create(n=3, **kw)
    b = oa.chat.completions.create(n=3, **kw)
    ids = lambda r: [c.model_extra["token_ids"] for c in sorted(r.choices, key=lambda c: c.index)]
    check([c.index for c in a.choices] == [0, 1, 2], f"indices {[c.index for c in a.choices]}")
    check(ids(a) == ids(b), f"n=3 with a seed is reproducible: {ids(a)} vs {ids(b)}")
    check(len({tuple(x) for x in ids(a)}) > 1, f"the choices differ: {ids(a)}")
    one = oa.chat.completions.create(n=1, **kw)
    check(ids(one)[0] == ids(a)[0], f"choice 0 equals n=1 with the same seed: {ids(one)[0]} vs {ids(a)[0]}")
    check(a.usage.completion_tokens == sum(len(x) for x in ids(a)), f"usage sums the choices: {a.usage}")
    check(a.usage.prompt_tokens == one.usage.prompt_tokens, "the prompt counts once")
    s = join_stream(oa.chat.completions.create(n=3, stream=True, **kw))
    check([s[i]["token_ids"] for i in range(3)] == ids(a), "streamed n=3 gives the same choices")
    print(f"n: {ids(a)}")


def check_json_schema(oa, _an, _out):
    for seed in range(3):
        for stream in (False, True):
            kw = dict(model="m", messages=[user("A person as JSON")], max_tokens=48, temperature=1, seed=seed,
                      response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}})
            if stream:
                s = join_stream(oa.chat.completions.create(stream=True, **kw))[0]
                text, finish = s["content"], s["finish"]
            else:
                c = oa.chat.completions.create(**kw).choices[0]
                text, finish = c.message.content, c.finish_reason
            check(finish == "stop", f"seed {seed}: the document ends with EOS within the budget ({finish}): {text!r}")
            try:
                doc = json.loads(text)
            except ValueError as e:
                raise Failure(f"seed {seed}: not JSON ({e}): {text!r}")
            jsonschema.validate(doc, SCHEMA)
    r = oa.chat.completions.create(model="m", messages=[user("JSON please")], max_tokens=40, temperature=1, seed=1,
                                   response_format={"type": "json_object"})
    check(isinstance(json.loads(r.choices[0].message.content), dict), "json_object gives an object")
    print(f"json_schema: last {doc}")


def check_bad_requests(oa, _an, _out):
    cases = [
        (dict(tools=TOOLS, tool_choice="required",
              response_format={"type": "json_object"}), "response_format"),
        (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
        (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "strnig"}}}}}), "response_format"),
        (dict(logprobs=False, top_logprobs=2), "top_logprobs"),
        (dict(n=9), "n"),
    ]
    for extra, param in cases:
        try:
            oa.chat.completions.create(model="m", messages=[user("x")], max_tokens=2, **extra)
            raise Failure(f"accepted: {extra}")
        except openai.BadRequestError as e:
            check(e.status_code == 400 and e.body and e.body.get("param") == param,
                  f"{extra}: 400 naming {param}, got {e.status_code} {e.body}")
    print("bad_requests: 400s name the field")


CHECKS = {
    "tools_openai": check_tools_openai,
    "tools_required": check_tools_required,
    "tools_anthropic": check_tools_anthropic,
    "text_anthropic": check_text_anthropic,
    "logprobs": check_logprobs,
    "n": check_n,
    "json_schema": check_json_schema,
    "bad_requests": check_bad_requests,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True, help="http://HOST:PORT (no /v1)")
    ap.add_argument("--expect", help="JSON with the fixture's prompt_tokens (logprobs)")
    ap.add_argument("--out", help="where to write what the Rust side recomputes")
    ap.add_argument("checks", nargs="+", choices=sorted(CHECKS))
    a = ap.parse_args()
    base = a.base_url.rstrip("/")
    oa = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=300)
    an = anthropic.Anthropic(base_url=base, api_key="none", max_retries=0, timeout=300)
    out = {"expect": json.load(open(a.expect)) if a.expect else {}}
    try:
        for name in a.checks:
            CHECKS[name](oa, an, out)
    except Failure as e:
        print(f"FAIL {name}: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        if a.out:
            out.pop("expect", None)
            with open(a.out, "w") as f:
                json.dump(out, f)


if __name__ == "__main__":
    main()
