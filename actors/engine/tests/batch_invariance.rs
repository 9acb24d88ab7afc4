//! Continuous batching must not change a sequence's numbers: a sequence decoded in a batch
//! with others, its prompt cut into chunks interleaved with their decode steps, gets the same
//! logits, bit for bit, as when it runs alone with its prompt in one piece. This holds because
//! attention runs per sequence on its own cache and every matmul computes each output row the
//! same way whatever the number of rows (`kernels/src/matmul/dots.rs`).
//!
//! The batched side is the generation engine itself (`moe_engine::Engine`, which `run`,
//! `bench`, the stdin router and `serve` all drive); the reference is a plain loop of
//! one-sequence forward calls.

use std::path::PathBuf;
use std::sync::Arc;

use moe_devdata::fixtures::all_fixture_cases;
use moe_engine::{Engine, EngineConfig, Request, Tracker};
use moe_kernels::{KvType, NumericMode};
use moe_model::forward::{KvCache, LocalExperts, NoObserver, SeqInput, TokenKind};
use moe_model::model::Model;
use moe_model::sampling::argmax;
use moe_model::tokenizer::Tokenizer;

/// Tokens decoded per sequence after its prompt.
const DECODE_STEPS: usize = 6;
/// Prompt tokens per batched step, over all prompts (small, to force chunking).
const PREFILL_BUDGET_TOKENS: usize = 7;
/// Positions per sequence cache.
const CTX_POSITIONS: usize = 256;

/// Every fixture GGUF with its cases' prompts.
fn fixture_models() -> Vec<(PathBuf, Vec<Vec<u32>>)> {
    let mut out: Vec<(PathBuf, Vec<Vec<u32>>)> = Vec::new();
    for case in all_fixture_cases().expect("the fixture manifests") {
        match out.last_mut() {
            Some((gguf, prompts)) if *gguf == case.gguf => prompts.push(case.tokens),
            _ => out.push((case.gguf, vec![case.tokens])),
        }
    }
    out
}

/// The logits after the prompt and after each greedy decode step, one sequence at a time.
fn alone(model: &Model, prompt: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = KvCache::for_model(model, CTX_POSITIONS);
    let mut out = Vec::new();
    let mut logits = model
        .forward(
            &mut [SeqInput {
                cache: &mut cache,
                tokens: prompt,
                all_logits: false,
                kind: TokenKind::Prompt { len: prompt.len() },
            }],
            &mut LocalExperts::default(),
            &mut NoObserver,
        )
        .unwrap()
        .remove(0);
    for _ in 0..DECODE_STEPS {
        let next = argmax(&logits);
        out.push(logits);
        logits = model
            .forward(
                &mut [SeqInput {
                    cache: &mut cache,
                    tokens: &[next],
                    all_logits: false,
                    kind: TokenKind::Generated,
                }],
                &mut LocalExperts::default(),
                &mut NoObserver,
            )
            .unwrap()
            .remove(0);
    }
    out.push(logits);
    out
}

/// Records the logits every token of sequence `index` is sampled from.
struct Recorder {
    index: usize,
    logits: Vec<Vec<f32>>,
}

impl Tracker for Recorder {
    fn sampled(&mut self, row: &[f32], _token: u32) {
        self.logits.push(row.to_vec());
    }
}

/// The same sequences through the engine: prompts chunked by a small per-step budget,
/// sequences admitted one step apart, greedy, past end tokens.
fn batched(model: &Model, prompts: &[Vec<u32>]) -> Vec<Vec<Vec<f32>>> {
    let tokenizer = Arc::new(Tokenizer::from_gguf(model.file()).unwrap());
    let cfg = EngineConfig {
        prefill_tokens_per_step: PREFILL_BUDGET_TOKENS,
        ..EngineConfig::new(CTX_POSITIONS)
    };
    let mut engine = Engine::new(model, tokenizer, cfg);
    let mut done: Vec<Option<Vec<Vec<f32>>>> = vec![None; prompts.len()];
    let mut step = 0;
    while done.iter().any(Option::is_none) {
        if let Some(prompt) = prompts.get(step) {
            let request = Request {
                ignore_eos: true,
                cache_prompt: false,
                ..Request::new(prompt.clone(), DECODE_STEPS + 1)
            };
            let tag = Recorder {
                index: step,
                logits: Vec::new(),
            };
            engine
                .admit(model, request, tag)
                .map_err(|(_, e)| e)
                .unwrap();
        }
        step += 1;
        for ended in engine.step(model, &mut LocalExperts::default()) {
            ended.result.expect("the step succeeds");
            done[ended.tag.index] = Some(ended.tag.logits);
        }
        assert!(step < 10_000, "the engine does not finish");
    }
    done.into_iter().map(Option::unwrap).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every fixture model in `mode` with KV caches of `kv_type`: batched, chunked decoding gives
/// each sequence the logits it gets alone, bit for bit.
fn assert_batch_invariant(mode: NumericMode, kv_type: KvType) {
    for (path, prompts) in fixture_models() {
        let model = Model::open(&path)
            .unwrap()
            .with_mode(mode)
            .with_kv_type(kv_type);
        let together = batched(&model, &prompts);
        for (p, (prompt, got)) in prompts.iter().zip(&together).enumerate() {
            let want = alone(&model, prompt);
            assert_eq!(got.len(), want.len(), "{}: prompt {p}", path.display());
            for (step, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    bits(g) == bits(w),
                    "{} ({mode:?}, kv {kv_type}): prompt {p}, step {step}: batched logits \
                     differ from alone",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn batched_chunked_decoding_gives_the_same_bits_as_alone() {
    assert_batch_invariant(NumericMode::Exact, KvType::default_for(NumericMode::Exact));
}

/// The same in Fast mode with its default (narrow) KV cache: activations are rounded to int8
/// per token row and block, and every cached row (a token's own included) is rounded once
/// when written, so a token's numbers still depend only on its own row and the cache.
#[test]
fn fast_mode_batched_chunked_decoding_gives_the_same_bits_as_alone() {
    assert_batch_invariant(NumericMode::Fast, KvType::default_for(NumericMode::Fast));
}

/// The same in Fast mode with every other KV cache type.
#[test]
fn fast_mode_batch_invariance_holds_for_every_kv_type() {
    for kv_type in KvType::ALL {
        if kv_type != KvType::default_for(NumericMode::Fast) {
            assert_batch_invariant(NumericMode::Fast, kv_type);
        }
    }
}
