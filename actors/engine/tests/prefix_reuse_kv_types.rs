//! Prefix reuse never changes a sequence's numbers, whatever the KV cache type: for every
//! [`KvType`], in Fast mode on the Q8_0 fixture model (so the integer kernels run), a prompt
//! that repeats an earlier prompt's first blocks and adds new tokens reuses those blocks
//! (reported through [`Tracker::prompt_cached`]) and gets the logits, bit for bit, that a cold
//! engine computes for the same prompt. Cached blocks keep rows as the cache stored them
//! (already rounded), and a cold run rounds the same values the same way.

use std::sync::Arc;

use moe_devdata::fixtures::fixtures_dir;
use moe_engine::{Engine, EngineConfig, Request, Tracker};
use moe_kernels::{KvType, NumericMode};
use moe_model::forward::{LocalExperts, PromptForm, FORM_GROUP_TOKENS, PREFIX_BLOCK_TOKENS};
use moe_model::model::Model;
use moe_model::tokenizer::Tokenizer;

/// Tokens decoded after each prompt.
const DECODE_STEPS: usize = 4;
/// Positions per sequence cache.
const CTX_POSITIONS: usize = 512;

/// What one sequence reported.
#[derive(Default)]
struct Record {
    cached: usize,
    logits: Vec<Vec<f32>>,
}

impl Tracker for Record {
    fn prompt_cached(&mut self, tokens: usize) {
        self.cached = tokens;
    }
    fn sampled(&mut self, row: &[f32], _token: u32) {
        self.logits.push(row.to_vec());
    }
}

/// Runs `prompt` to completion (greedy, past end tokens) with prefix reuse on or off.
fn complete(model: &Model, engine: &mut Engine<Record>, prompt: &[u32], reuse: bool) -> Record {
    let request = Request {
        ignore_eos: true,
        cache_prompt: reuse,
        ..Request::new(prompt.to_vec(), DECODE_STEPS)
    };
    engine
        .admit(model, request, Record::default())
        .map_err(|(_, e)| e)
        .unwrap();
    for _ in 0..10_000 {
        if let Some(ended) = engine.step(model, &mut LocalExperts::default()).pop() {
            ended.result.expect("the sequence finishes");
            return ended.tag;
        }
    }
    panic!("the engine does not finish");
}

fn bits(v: &[Vec<f32>]) -> Vec<Vec<u32>> {
    v.iter()
        .map(|r| r.iter().map(|x| x.to_bits()).collect())
        .collect()
}

/// Prompt tokens: `n` of a fixed sequence.
fn tokens(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 37 + 11) % 1000).collect()
}

/// Runs `history`, then `turn` (which starts with it) on one engine with prefix reuse, and
/// `turn` cold on another: the warm run reuses `reused` tokens and gets the cold logits.
fn warm_equals_cold(model: &Model, history: &[u32], turn: &[u32], reused: usize, what: &str) {
    let tokenizer = Arc::new(Tokenizer::from_gguf(model.file()).unwrap());
    let reusing = EngineConfig {
        cache_tokens: 8 * PREFIX_BLOCK_TOKENS,
        ..EngineConfig::new(CTX_POSITIONS)
    };
    let mut warm_engine = Engine::new(model, tokenizer.clone(), reusing);
    let first = complete(model, &mut warm_engine, history, true);
    assert_eq!(first.cached, 0, "{what}: nothing cached before");
    let warm = complete(model, &mut warm_engine, turn, true);
    assert_eq!(warm.cached, reused, "{what}: tokens reused");
    let mut cold_engine = Engine::new(model, tokenizer, EngineConfig::new(CTX_POSITIONS));
    let cold = complete(model, &mut cold_engine, turn, false);
    assert_eq!(cold.cached, 0);
    assert_eq!(warm.logits.len(), DECODE_STEPS);
    assert!(
        bits(&warm.logits) == bits(&cold.logits),
        "{what}: prefix reuse changed the logits"
    );
}

#[test]
fn prefix_reuse_gives_the_cold_logits_for_every_kv_type() {
    let path = fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
    let history = tokens(2 * PREFIX_BLOCK_TOKENS + 5);
    let turn = [
        history.clone(),
        (0..9u32).map(|i| (i * 53 + 7) % 1000).collect(),
    ]
    .concat();
    for kv_type in KvType::ALL {
        let model = Model::open(&path)
            .unwrap()
            .with_mode(NumericMode::Fast)
            .with_kv_type(kv_type);
        // The history's two whole blocks are reused.
        let what = format!("{kv_type}");
        warm_equals_cold(&model, &history, &turn, 2 * PREFIX_BLOCK_TOKENS, &what);
    }
}

/// A fast-mode prompt's short tail takes the absorbed form, which a longer prompt computes
/// decompressed ([`PromptForm`]): a history whose absorbed tail spans a whole block keeps
/// only the blocks before its tail, and a turn that extends it past the tail's group gets
/// the cold logits (keeping the tail's block would hand it the absorbed form's bits).
#[test]
fn prefix_reuse_skips_an_absorbed_prompt_tail() {
    let path = fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
    let model = Model::open(&path).unwrap().with_mode(NumericMode::Fast);
    let PromptForm::Decompressed { min_tail } = model.prompt_form() else {
        panic!("fast mode decompresses prompts");
    };
    let tail = (min_tail - 1).min(FORM_GROUP_TOKENS - 1);
    assert!(
        tail >= PREFIX_BLOCK_TOKENS,
        "an absorbed tail of {tail} tokens spans no whole block"
    );
    let history = tokens(2 * FORM_GROUP_TOKENS + tail);
    assert_eq!(
        model.prompt_form().reusable(history.len()),
        2 * FORM_GROUP_TOKENS
    );
    let turn = tokens(history.len() + FORM_GROUP_TOKENS);
    warm_equals_cold(
        &model,
        &history,
        &turn,
        2 * FORM_GROUP_TOKENS,
        "absorbed tail",
    );
}
