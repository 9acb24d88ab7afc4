//! Chat prompts: the GGUF's `tokenizer.chat_template` (a Hugging Face Jinja template)
//! rendered with minijinja the way `transformers.apply_chat_template` renders it
//! (`trim_blocks`, `lstrip_blocks`, Python string methods, `raise_exception`), with
//! `messages`, `tools` (when the request has any), `add_generation_prompt`, `bos_token` and
//! `eos_token` in scope.
//!
//! Where minijinja and Jinja2 differ in ways the tool-calling templates of Kimi K2/K2.5 and
//! DeepSeek-V3 notice, this module makes minijinja behave as `transformers` does:
//!
//! - `tojson` is `transformers`' own filter, Python's `json.dumps(x, ensure_ascii=False)`:
//!   `", "` and `": "` separators, keys in the order given, no HTML escaping (minijinja's
//!   writes compact JSON and escapes `<`, `>`, `&`, `'`); `indent=N` as in Python.
//! - lists made by `namespace(ids=[])` take `append(x)` and `pop(i)` (Kimi K2's templates
//!   queue tool-call ids that way); minijinja's values are otherwise immutable.
//!
//! `tests/data/chat_templates/` holds the real templates, the conversations and what
//! `transformers` renders of them; `chat_template_matches_transformers` compares byte for byte.
//!
//! A model without a template gets [`DEFAULT_CHAT_TEMPLATE`], ChatML:
//!
//! ```text
//! <|im_start|>{role}\n{content}<|im_end|>\n   (per message)
//! <|im_start|>assistant\n                    (the generation prompt)
//! ```
//!
//! Decides: the text of a conversation. Leaves tokenizing it to the tokenizer (special
//! tokens in the rendered text are parsed as special).

use std::sync::{Arc, Mutex};

use minijinja::value::{Kwargs, Object, ObjectRepr, Value as JValue};
use minijinja::{Environment, ErrorKind, State};
use serde_json::Value;

/// The template used when the GGUF has no `tokenizer.chat_template`: ChatML.
pub const DEFAULT_CHAT_TEMPLATE: &str =
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n\
{{ message['content'] }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Longest chat template accepted from a GGUF file, in bytes.
pub const CHAT_TEMPLATE_BYTES_MAX: usize = 1 << 20;

const TEMPLATE_NAME: &str = "chat";

/// Deepest `indent=N` the `tojson` filter accepts, in spaces.
pub const TOJSON_INDENT_SPACES_MAX: usize = 16;

/// What a chat prompt is rendered from.
#[derive(Debug, Clone, Copy)]
pub struct ChatPrompt<'a> {
    /// Messages as the template sees them ([`crate::openai::ChatMessage::template_value`]).
    pub messages: &'a [Value],
    /// OpenAI-shaped tool definitions (`{"type": "function", "function": {...}}`); `None`
    /// or empty leaves `tools` undefined, as `transformers` does for `tools=None`.
    pub tools: Option<&'a [Value]>,
    /// End with the assistant's turn opener.
    pub add_generation_prompt: bool,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos: String,
    eos: String,
    /// Whether it came from the model file (else the default).
    pub from_model: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("from_model", &self.from_model)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source` (or the default when `None`); `bos`/`eos` are the token texts.
    pub fn new(source: Option<&str>, bos: String, eos: String) -> anyhow::Result<Self> {
        let from_model = source.is_some();
        let source = source.unwrap_or(DEFAULT_CHAT_TEMPLATE);
        if source.len() > CHAT_TEMPLATE_BYTES_MAX {
            anyhow::bail!(
                "the chat template has {} bytes; at most {CHAT_TEMPLATE_BYTES_MAX} are accepted",
                source.len()
            );
        }
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_filter("tojson", tojson_python);
        env.add_function("namespace", namespace_with_lists);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| anyhow::anyhow!("the chat template does not compile: {e}"))?;
        Ok(Self {
            env,
            source: source.to_string(),
            bos,
            eos,
            from_model,
        })
    }

    /// The template's source text (to detect its tool-call format).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation (messages as JSON objects with `role` and `content`), no
    /// tools, with the generation prompt.
    pub fn render(&self, messages: &[Value]) -> Result<String, String> {
        self.render_prompt(&ChatPrompt {
            messages,
            tools: None,
            add_generation_prompt: true,
        })
    }

    /// Renders a conversation with its tools.
    pub fn render_prompt(&self, prompt: &ChatPrompt<'_>) -> Result<String, String> {
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| e.to_string())?;
        let tools = prompt.tools.filter(|t| !t.is_empty());
        tmpl.render(minijinja::context! {
            messages => prompt.messages,
            tools => tools,
            add_generation_prompt => prompt.add_generation_prompt,
            bos_token => &self.bos,
            eos_token => &self.eos,
        })
        .map_err(|e| format!("the chat template refused the conversation: {e}"))
    }
}

/// `transformers`' `tojson`: `json.dumps(value, ensure_ascii=False, indent=indent)`.
fn tojson_python(value: JValue, kwargs: Kwargs) -> Result<JValue, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    if indent.is_some_and(|n| n > TOJSON_INDENT_SPACES_MAX) {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson indent over {TOJSON_INDENT_SPACES_MAX} spaces"),
        ));
    }
    let mut out = Vec::new();
    let fmt = PythonJsonFormatter {
        indent: indent.map(|n| vec![b' '; n]),
        depth: 0,
        has_value: false,
    };
    let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
    serde::Serialize::serialize(&value, &mut ser)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    // serde_json writes valid UTF-8.
    Ok(JValue::from(String::from_utf8_lossy(&out).into_owned()))
}

/// Python's `json.dumps` layout: `", "` / `": "` without indent, newlines and `","` with.
struct PythonJsonFormatter {
    indent: Option<Vec<u8>>,
    depth: usize,
    /// The innermost open container has a value (so, with indent, it closes on a new line).
    has_value: bool,
}

impl PythonJsonFormatter {
    fn newline<W: ?Sized + std::io::Write>(&self, w: &mut W) -> std::io::Result<()> {
        if let Some(ind) = &self.indent {
            w.write_all(b"\n")?;
            for _ in 0..self.depth {
                w.write_all(ind)?;
            }
        }
        Ok(())
    }

    fn separator<W: ?Sized + std::io::Write>(&self, w: &mut W, first: bool) -> std::io::Result<()> {
        if !first {
            w.write_all(if self.indent.is_some() { b"," } else { b", " })?;
        }
        self.newline(w)
    }
}

impl serde_json::ser::Formatter for PythonJsonFormatter {
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        w.write_all(b"[")
    }
    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth -= 1;
        if self.has_value {
            self.newline(w)?;
        }
        w.write_all(b"]")
    }
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.separator(w, first)
    }
    fn end_array_value<W: ?Sized + std::io::Write>(&mut self, _w: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }
    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        w.write_all(b"{")
    }
    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth -= 1;
        if self.has_value {
            self.newline(w)?;
        }
        w.write_all(b"}")
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.separator(w, first)
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
    fn end_object_value<W: ?Sized + std::io::Write>(&mut self, _w: &mut W) -> std::io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

/// `namespace(...)` whose list values take `append` and `pop`, as Python lists do.
fn namespace_with_lists(defaults: Option<JValue>) -> Result<JValue, minijinja::Error> {
    let Some(defaults) = defaults else {
        return minijinja::functions::namespace(None);
    };
    let Some(pairs) = defaults.as_object().and_then(|o| o.try_iter_pairs()) else {
        return minijinja::functions::namespace(Some(defaults));
    };
    let wrapped: Vec<(JValue, JValue)> = pairs
        .map(|(k, v)| {
            let v = match v.try_iter() {
                Ok(items) if matches!(v.kind(), minijinja::value::ValueKind::Seq) => {
                    JValue::from_object(MutableList(Mutex::new(items.collect())))
                }
                _ => v,
            };
            (k, v)
        })
        .collect();
    minijinja::functions::namespace(Some(JValue::from_iter(wrapped)))
}

/// A list a template can change: `append(x)`, `pop()`, `pop(i)`.
#[derive(Debug)]
struct MutableList(Mutex<Vec<JValue>>);

impl MutableList {
    fn items(&self) -> std::sync::MutexGuard<'_, Vec<JValue>> {
        // A poisoned lock only means another render panicked mid-push; the list is intact.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Object for MutableList {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }

    fn get_value(self: &Arc<Self>, key: &JValue) -> Option<JValue> {
        let items = self.items();
        let i = key.as_i64()?;
        let i = if i < 0 { items.len() as i64 + i } else { i };
        items.get(usize::try_from(i).ok()?).cloned()
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        minijinja::value::Enumerator::Values(self.items().clone())
    }

    fn call_method(
        self: &Arc<Self>,
        _state: &State<'_, '_>,
        method: &str,
        args: &[JValue],
    ) -> Result<JValue, minijinja::Error> {
        let mut items = self.items();
        match (method, args) {
            ("append", [x]) => {
                items.push(x.clone());
                Ok(JValue::from(()))
            }
            ("pop", []) => items.pop().ok_or_else(empty_pop),
            ("pop", [i]) => {
                let i = i.as_i64().ok_or_else(|| {
                    minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "pop index is not an integer",
                    )
                })?;
                let i = if i < 0 { items.len() as i64 + i } else { i };
                match usize::try_from(i) {
                    Ok(i) if i < items.len() => Ok(items.remove(i)),
                    _ => Err(empty_pop()),
                }
            }
            _ => Err(minijinja::Error::from(ErrorKind::UnknownMethod)),
        }
    }
}

fn empty_pop() -> minijinja::Error {
    minijinja::Error::new(
        ErrorKind::InvalidOperation,
        "pop from an empty list or out of range",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn default_template_is_chatml() {
        let t = ChatTemplate::new(None, String::new(), String::new()).unwrap();
        let out = t
            .render(&[
                json!({"role": "system", "content": "Be brief."}),
                json!({"role": "user", "content": "Hi"}),
            ])
            .unwrap();
        assert_eq!(out, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn hf_style_templates_render() {
        // trim_blocks/lstrip_blocks, Python string methods, raise_exception, bos_token.
        let src = "{{ bos_token }}{% for m in messages %}\n  {% if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role ' + m['role']) }}{% endif %}\n[{{ m['role'].upper() }}] {{ m['content'].strip() }}\n{% endfor %}";
        let t = ChatTemplate::new(Some(src), "<s>".into(), "</s>".into()).unwrap();
        assert_eq!(
            t.render(&[json!({"role": "user", "content": "  hi "})])
                .unwrap(),
            "<s>[USER] hi\n"
        );
        let e = t
            .render(&[json!({"role": "robot", "content": "x"})])
            .unwrap_err();
        assert!(e.contains("bad role robot"), "{e}");
    }

    #[test]
    fn deepseek_v3_style_template_renders() {
        // The constructs of DeepSeek-V3's template: namespace, `is none`, `in`, split()[-1].
        let src = "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}\
{% set ns = namespace(is_first_sp=true, system_prompt='') %}\
{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}\
{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}\
{%- else %}{% set ns.system_prompt = ns.system_prompt + '\n\n' + message['content'] %}{%- endif %}{%- endif %}{%- endfor %}\
{{ bos_token }}{{ ns.system_prompt }}\
{%- for message in messages %}{%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}{%- endif %}\
{%- if message['role'] == 'assistant' and message['content'] is not none %}{%- set content = message['content'] -%}\
{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1] -%}{%- endif %}\
{{ '<｜Assistant｜>' + content + eos_token }}{%- endif %}{%- endfor -%}\
{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}";
        let t = ChatTemplate::new(
            Some(src),
            "<｜begin▁of▁sentence｜>".into(),
            "<｜end▁of▁sentence｜>".into(),
        )
        .unwrap();
        let msgs = [
            json!({"role": "system", "content": "S"}),
            json!({"role": "user", "content": "Hi"}),
            json!({"role": "assistant", "content": "<think>x</think>Yo"}),
            json!({"role": "user", "content": "Q"}),
        ];
        assert_eq!(
            t.render(&msgs).unwrap(),
            "<｜begin▁of▁sentence｜>S<｜User｜>Hi<｜Assistant｜>Yo<｜end▁of▁sentence｜><｜User｜>Q<｜Assistant｜>"
        );
    }

    fn template_dir() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/chat_templates")
    }

    fn special_tokens(template_name: &str) -> (String, String) {
        // As render_expected.py passes them.
        if template_name.to_lowercase().contains("deepseek") {
            (
                "<｜begin▁of▁sentence｜>".into(),
                "<｜end▁of▁sentence｜>".into(),
            )
        } else {
            ("[BOS]".into(), "[EOS]".into())
        }
    }

    /// Proves: the real Kimi K2 / K2 0905 / K2 Thinking and DeepSeek-R1(-V3 markup) / V3.1
    /// templates, with tools, tool calls and tool results, render byte for byte as
    /// `transformers` renders them (expected files written by render_expected.py); where
    /// `transformers` refuses (its sandbox forbids `list.append`), minijinja renders anyway.
    #[test]
    fn chat_template_matches_transformers() {
        let dir = template_dir();
        let spec: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("conversations.json")).unwrap())
                .unwrap();
        let mut compared = 0;
        let mut templates: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "jinja"))
            .collect();
        templates.sort();
        assert_eq!(templates.len(), 5, "templates in {dir:?}");
        for path in templates {
            let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
            let (bos, eos) = special_tokens(&stem);
            let t = ChatTemplate::new(Some(&std::fs::read_to_string(&path).unwrap()), bos, eos)
                .unwrap();
            for conv in spec["conversations"].as_array().unwrap() {
                let name = conv["name"].as_str().unwrap();
                let messages = conv["messages"].as_array().unwrap();
                let tools = conv.get("tools").and_then(Value::as_array);
                let got = t
                    .render_prompt(&ChatPrompt {
                        messages,
                        tools: tools.map(Vec::as_slice),
                        add_generation_prompt: true,
                    })
                    .unwrap_or_else(|e| panic!("{stem}.{name}: {e}"));
                let expected = dir.join(format!("expected/{stem}.{name}.txt"));
                if expected.exists() {
                    let want = std::fs::read_to_string(&expected).unwrap();
                    assert_eq!(got, want, "{stem}.{name} differs from transformers");
                    compared += 1;
                } else {
                    assert!(dir
                        .join(format!("expected/{stem}.{name}.refused.txt"))
                        .exists());
                    // The queue of tool-call ids (append/pop) pairs each result with its call.
                    assert!(
                        got.contains("## Return of functions.get_weather:0\n{\"temp_c\""),
                        "{got}"
                    );
                    assert!(got.contains("## Return of functions.add:1\n5"), "{got}");
                }
            }
        }
        assert_eq!(compared, 13);
    }

    /// Proves: `tojson` writes Python's `json.dumps(ensure_ascii=False)` layout, not
    /// minijinja's compact, HTML-escaped one.
    #[test]
    fn tojson_is_pythons() {
        let t = ChatTemplate::new(
            Some("{{ messages[0] | tojson }}|{{ messages[0] | tojson(indent=2) }}|{{ [] | tojson(indent=2) }}"),
            String::new(),
            String::new(),
        )
        .unwrap();
        let out = t
            .render(&[json!({"z": "<ä>&'", "a": [1, 2.5, null, true], "m": {}})])
            .unwrap();
        assert_eq!(
            out,
            "{\"z\": \"<ä>&'\", \"a\": [1, 2.5, null, true], \"m\": {}}|{\n  \"z\": \"<ä>&'\",\n  \"a\": [\n    1,\n    2.5,\n    null,\n    true\n  ],\n  \"m\": {}\n}|[]"
        );
    }

    /// Proves: namespace lists take append/pop, and a pop from an empty list is an error,
    /// not a panic.
    #[test]
    fn namespace_lists_are_mutable() {
        let src = "{% set ns = namespace(q=[]) %}{% set _ = ns.q.append('a') %}{% set _ = ns.q.append('b') %}{{ ns.q | length }}{{ ns.q.pop(0) }}{% if ns.q %}{{ ns.q[0] }}{% endif %}{{ ns.q.pop() }}{% if not ns.q %}E{% endif %}";
        let t = ChatTemplate::new(Some(src), String::new(), String::new()).unwrap();
        assert_eq!(t.render(&[]).unwrap(), "2abbE");
        let t = ChatTemplate::new(
            Some("{% set ns = namespace(q=[]) %}{{ ns.q.pop() }}"),
            String::new(),
            String::new(),
        )
        .unwrap();
        assert!(t.render(&[]).is_err());
    }

    #[test]
    fn broken_templates_are_load_errors() {
        assert!(ChatTemplate::new(Some("{% for %}"), String::new(), String::new()).is_err());
    }
}
