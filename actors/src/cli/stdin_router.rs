//! `moe-node --role router`: owns attention, dense layers, gates, shared experts, output and
//! sampling; routed experts run on the placement's nodes. With `--http ADDR` it serves the
//! OpenAI API (`serve.rs`); without, it serves generation requests as JSON lines on stdin, one
//! answer line each on stdout:
//!
//! ```text
//! in:  {"prompt": "Hello", "max_tokens": 16, "temperature": 0.0, "seed": 0, "ignore_eos": false}
//! out: {"text": "...", "tokens": [..], "prompt_tokens": 3}   or   {"error": "..."}
//! ```
//! A failed request (e.g. an expert node died without a replica) answers with an error naming
//! the node; the router keeps serving and its links reconnect when the node is back.

use std::io::{BufRead, Write};

use moe_model::sampling::SamplingParams;
use moe_model::tokenizer::Tokenizer;
use serde::Deserialize;

use crate::cli::generate::{generate, GenRequest};
use crate::options::ModelArgs;
use crate::options::RouterArgs;

/// Longest request line accepted, in bytes.
pub const REQUEST_LINE_BYTES_MAX: usize = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    prompt: String,
    #[serde(default = "default_max_tokens")]
    max_tokens: usize,
    #[serde(default)]
    temperature: f32,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    ignore_eos: bool,
}

fn default_max_tokens() -> usize {
    16
}

/// The next line of `input` (None at the end), reading at most `REQUEST_LINE_BYTES_MAX` bytes
/// of it into memory; `true` when the line was longer (the rest is read and dropped).
fn read_request_line(input: &mut impl BufRead) -> std::io::Result<Option<(String, bool)>> {
    let mut buf = Vec::new();
    let n = std::io::Read::take(&mut *input, REQUEST_LINE_BYTES_MAX as u64 + 1)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    let too_long = buf.last() != Some(&b'\n') && n > REQUEST_LINE_BYTES_MAX;
    if too_long {
        // Skip to the end of the line without keeping it.
        let mut sink = Vec::new();
        loop {
            sink.clear();
            let m = std::io::Read::take(&mut *input, 64 * 1024).read_until(b'\n', &mut sink)?;
            if m == 0 || sink.last() == Some(&b'\n') {
                break;
            }
        }
        return Ok(Some((String::new(), true)));
    }
    Ok(Some((String::from_utf8_lossy(&buf).into_owned(), false)))
}

/// Serves requests from stdin until it closes.
pub fn run(model_args: &ModelArgs, cluster: &RouterArgs) -> anyhow::Result<()> {
    let model = model_args.load_for(Some(cluster), moe_kernels::NumericMode::Fast)?;
    let tok = std::sync::Arc::new(Tokenizer::from_gguf(model.file())?);
    if cluster.placement.is_none() {
        anyhow::bail!("--role router needs --placement and --secret-file");
    }
    let (mut experts, _) = cluster.backend(&model, model_args.compute.handle(&model)?)?;
    let stdout = std::io::stdout();
    writeln!(stdout.lock(), "{}", serde_json::json!({ "ready": true }))?;
    let mut stdin = std::io::stdin().lock();
    while let Some((line, too_long)) = read_request_line(&mut stdin)? {
        if line.trim().is_empty() && !too_long {
            continue;
        }
        let answer = if too_long {
            serde_json::json!({ "error": format!("request line longer than {REQUEST_LINE_BYTES_MAX} bytes") })
        } else {
            match serde_json::from_str::<Request>(&line) {
                Err(e) => serde_json::json!({ "error": format!("bad request: {e}") }),
                Ok(r) => {
                    let params = SamplingParams {
                        temperature: r.temperature,
                        seed: r.seed,
                        ..Default::default()
                    };
                    let prompt = tok.encode_prompt(&r.prompt);
                    let req = GenRequest {
                        prompt: &prompt,
                        max_tokens: r.max_tokens,
                        sampling: params.clone(),
                        ignore_eos: r.ignore_eos,
                        ctx_size: model_args.ctx_size,
                        draft_max: 0,
                    };
                    let mut text = String::new();
                    let result = match params.validate() {
                        Err(e) => Err(e.to_string()),
                        Ok(()) => generate(&model, &tok, experts.as_mut(), &req, &mut |t| {
                            text.push_str(t)
                        })
                        .map_err(|e| e.to_string()),
                    };
                    match result {
                        Ok(stats) => {
                            serde_json::json!({ "text": text, "tokens": stats.generated, "prompt_tokens": prompt.len() })
                        }
                        Err(e) => serde_json::json!({ "error": e }),
                    }
                }
            }
        };
        let mut out = stdout.lock();
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}
