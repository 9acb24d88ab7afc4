//! Chat prompts: the GGUF's `tokenizer.chat_template` (a Hugging Face Jinja template)
//! rendered with minijinja the way `transformers.apply_chat_template` renders it
//! (`trim_blocks`, `lstrip_blocks`, Python string methods, `raise_exception`), with
//! `messages`, `add_generation_prompt = true`, `bos_token` and `eos_token` in scope.
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

use minijinja::{Environment, ErrorKind};
use serde_json::Value;

/// The template used when the GGUF has no `tokenizer.chat_template`: ChatML.
pub const DEFAULT_CHAT_TEMPLATE: &str =
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n\
{{ message['content'] }}<|im_end|>\n{% endfor %}\
{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Longest chat template accepted from a GGUF file, in bytes.
pub const CHAT_TEMPLATE_BYTES_MAX: usize = 1 << 20;

const TEMPLATE_NAME: &str = "chat";

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
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
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| anyhow::anyhow!("the chat template does not compile: {e}"))?;
        Ok(Self {
            env,
            bos,
            eos,
            from_model,
        })
    }

    /// Renders a conversation (messages as JSON objects with `role` and `content`).
    pub fn render(&self, messages: &[Value]) -> Result<String, String> {
        let tmpl = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| e.to_string())?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => &self.bos,
            eos_token => &self.eos,
        })
        .map_err(|e| format!("the chat template refused the conversation: {e}"))
    }
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

    #[test]
    fn broken_templates_are_load_errors() {
        assert!(ChatTemplate::new(Some("{% for %}"), String::new(), String::new()).is_err());
    }
}
