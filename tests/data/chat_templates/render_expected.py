#!/usr/bin/env python3
"""Renders the conversations in conversations.json through each template here with
transformers' own chat-template renderer (the code behind `apply_chat_template`) and
writes expected/<template>.<conversation>.txt, the bytes `chat_template_matches_transformers`
(actors/src/serve/chat_template.rs) compares minijinja's rendering with. Where transformers
refuses (its sandbox forbids `list.append`, which Kimi-K2-Instruct's template calls once a
conversation has tool calls) it writes <template>.<conversation>.refused.txt with the error.

    pip install transformers jinja2      # no torch needed
    python3 tests/data/chat_templates/render_expected.py
"""
import json
import pathlib

from transformers.utils.chat_template_utils import render_jinja_template

HERE = pathlib.Path(__file__).resolve().parent
# The special-token texts each model family's tokenizer passes as bos_token / eos_token.
TOKENS = {
    "deepseek": {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"},
    "kimi": {"bos_token": "[BOS]", "eos_token": "[EOS]"},
}


def family(name: str) -> str:
    return "deepseek" if "deepseek" in name.lower() else "kimi"


def main() -> None:
    spec = json.loads((HERE / "conversations.json").read_text())
    out_dir = HERE / "expected"
    out_dir.mkdir(exist_ok=True)
    for template in sorted(HERE.glob("*.jinja")):
        source = template.read_text()
        for conv in spec["conversations"]:
            try:
                rendered, _ = render_jinja_template(
                    conversations=[conv["messages"]],
                    tools=conv.get("tools"),
                    chat_template=source,
                    add_generation_prompt=conv.get("add_generation_prompt", True),
                    **TOKENS[family(template.name)],
                )
            except Exception as e:  # noqa: BLE001 - the refusal itself is the datum
                path = out_dir / f"{template.stem}.{conv['name']}.refused.txt"
                path.write_text(f"{type(e).__name__}: {e}\n")
                print(path.relative_to(HERE), "refused:", e)
                continue
            path = out_dir / f"{template.stem}.{conv['name']}.txt"
            path.write_text(rendered[0])
            print(path.relative_to(HERE), len(rendered[0]), "chars")


if __name__ == "__main__":
    main()
