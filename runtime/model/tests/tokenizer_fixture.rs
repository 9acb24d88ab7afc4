//! The tokenizer against the reference fixtures (`../shared/fixtures`): the vocabulary read
//! from each GGUF through the crate's reader must encode every manifest prompt to the
//! manifest's token ids (no BOS), and decode them back to the prompt.

use moe_devdata::fixtures::{fixture_cases, fixtures_dir};
use moe_model::gguf::{GgufFile, Value};
use moe_model::tokenizer::{PreTokenizerKind, StreamDecoder, Tokenizer, TokenizerSpec};

fn strings(file: &GgufFile, key: &str) -> Vec<String> {
    let value = file
        .metadata(key)
        .unwrap_or_else(|| panic!("{key} missing"));
    let items = value
        .as_array()
        .unwrap_or_else(|| panic!("{key} is not an array"));
    items
        .iter()
        .map(|v| v.as_str().expect("string element").to_owned())
        .collect()
}

fn id(file: &GgufFile, key: &str) -> Option<u32> {
    file.metadata(key)
        .and_then(Value::as_u64)
        .map(|v| u32::try_from(v).unwrap())
}

/// The vocabulary of a GGUF file, read the way llama.cpp's `llama_vocab::load` reads it.
fn spec_from_gguf(file: &GgufFile) -> TokenizerSpec {
    let text = |key: &str| {
        file.metadata(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let token_types = file
        .metadata("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(|v| v.as_i64().unwrap() as i32).collect())
        .unwrap_or_default();
    TokenizerSpec {
        model: text("tokenizer.ggml.model").expect("tokenizer.ggml.model"),
        tokens: strings(file, "tokenizer.ggml.tokens"),
        token_types,
        merges: strings(file, "tokenizer.ggml.merges"),
        pre: text("tokenizer.ggml.pre").unwrap_or_else(|| "default".into()),
        bos: id(file, "tokenizer.ggml.bos_token_id"),
        eos: id(file, "tokenizer.ggml.eos_token_id"),
        add_bos: file
            .metadata("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

fn check_fixture(dir: &str, gguf: &str) {
    let root = fixtures_dir().join(dir);
    let file = GgufFile::open(root.join(gguf)).unwrap();
    let tok = Tokenizer::new(spec_from_gguf(&file)).unwrap();
    assert_eq!(tok.pre_tokenizer(), PreTokenizerKind::Gpt2);
    assert_eq!(tok.vocab_size(), 1024);
    assert_eq!(
        (tok.bos(), tok.eos(), tok.add_bos()),
        (Some(1022), Some(1023), false)
    );
    assert_eq!(tok.token_to_id("<|eos|>"), Some(1023));
    let cases: Vec<(String, Vec<u32>)> = fixture_cases(dir)
        .expect("the fixture manifest")
        .into_iter()
        .map(|c| (c.prompt, c.tokens))
        .collect();
    assert!(!cases.is_empty(), "{dir}: no cases in the manifest");
    for (prompt, tokens) in &cases {
        assert_eq!(
            &tok.encode(prompt, true),
            tokens,
            "{dir}/{gguf}: {prompt:?}"
        );
        assert_eq!(
            &tok.encode(prompt, false),
            tokens,
            "{dir}/{gguf}: {prompt:?}"
        );
        assert_eq!(tok.decode(tokens), prompt.as_bytes());
        let mut stream = StreamDecoder::new(&tok);
        let mut streamed: String = tokens.iter().map(|&t| stream.push(t)).collect();
        streamed.push_str(&stream.flush());
        assert_eq!(&streamed, prompt);
    }
    // Control tokens in the text are tokens only when parsing specials.
    let with_eos = format!("{}<|eos|>", cases[0].0);
    let mut expected = cases[0].1.clone();
    expected.push(1023);
    assert_eq!(tok.encode(&with_eos, true), expected);
    assert_ne!(tok.encode(&with_eos, false), expected);
}

#[test]
fn kimi_k25_tiny_prompts_encode_to_the_manifest_tokens() {
    check_fixture("kimi-k25-tiny", "kimi-k25-tiny-BF16.gguf");
    check_fixture("kimi-k25-tiny", "kimi-k25-tiny-Q8_0.gguf");
}

#[test]
fn kimi_k25_kq_prompts_encode_to_the_manifest_tokens() {
    check_fixture("kimi-k25-kq", "kimi-k25-kq-Q4_K_M.gguf");
}
