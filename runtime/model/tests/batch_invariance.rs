//! Continuous batching must not change a sequence's numbers: a sequence decoded in a batch
//! with others, its prompt cut into chunks interleaved with their decode steps, gets the same
//! logits, bit for bit, as when it runs alone with its prompt in one piece. This holds because
//! attention runs per sequence on its own cache and every matmul computes each output row the
//! same way whatever the number of rows (`kernels/src/matmul/row_kernel.rs`).

use std::path::PathBuf;

use moe_model::forward::{KvCache, LocalExperts, NoObserver, SeqInput};
use moe_model::model::Model;
use moe_model::sampling::argmax;
use moe_devdata::fixtures::fixtures_dir;
use serde_json::Value;

/// Tokens decoded per sequence after its prompt.
const DECODE_STEPS: usize = 6;
/// Prompt tokens per batched step, over all prompts (small, to force chunking).
const PREFILL_BUDGET_TOKENS: usize = 7;
/// Positions per sequence cache.
const CTX_POSITIONS: usize = 256;


fn fixture_models() -> Vec<(PathBuf, Vec<Vec<u32>>)> {
    let mut out = Vec::new();
    for dir in ["kimi-k25-tiny", "kimi-k25-kq"] {
        let root = fixtures_dir().join(dir);
        let m: Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("manifest.json")).unwrap())
                .unwrap();
        let prompts: Vec<Vec<u32>> = m["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                c["tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_u64().unwrap() as u32)
                    .collect()
            })
            .collect();
        for (_, file) in m["files"].as_object().unwrap() {
            out.push((root.join(file["gguf"].as_str().unwrap()), prompts.clone()));
        }
    }
    out
}

/// The logits after the prompt and after each greedy decode step, one sequence at a time.
fn alone(model: &Model, prompt: &[u32]) -> Vec<Vec<f32>> {
    let mut cache = KvCache::new(&model.cfg, CTX_POSITIONS);
    let mut out = Vec::new();
    let mut logits = model
        .forward(
            &mut [SeqInput {
                cache: &mut cache,
                tokens: prompt,
                all_logits: false,
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

struct Seq {
    prompt: Vec<u32>,
    prefilled: usize,
    next: Option<u32>,
    cache: KvCache,
    logits: Vec<Vec<f32>>,
    feed: Vec<u32>,
}

/// The same sequences scheduled as the serving engine does: every step one decode token per
/// generating sequence plus prompt chunks up to the budget; sequences start one step apart.
fn batched(model: &Model, prompts: &[Vec<u32>]) -> Vec<Vec<Vec<f32>>> {
    let mut seqs: Vec<Seq> = Vec::new();
    let mut step = 0;
    loop {
        if step < prompts.len() {
            seqs.push(Seq {
                prompt: prompts[step].clone(),
                prefilled: 0,
                next: None,
                cache: KvCache::new(&model.cfg, CTX_POSITIONS),
                logits: Vec::new(),
                feed: Vec::new(),
            });
        }
        step += 1;
        let mut budget = PREFILL_BUDGET_TOKENS;
        for s in &mut seqs {
            s.feed.clear();
            if s.logits.len() > DECODE_STEPS {
                continue;
            }
            if let Some(t) = s.next {
                s.feed.push(t);
            } else if s.prefilled < s.prompt.len() && budget > 0 {
                let n = budget.min(s.prompt.len() - s.prefilled);
                s.feed
                    .extend_from_slice(&s.prompt[s.prefilled..s.prefilled + n]);
                budget -= n;
            }
        }
        if seqs.len() == prompts.len() && seqs.iter().all(|s| s.feed.is_empty()) {
            break;
        }
        let mut batch: Vec<SeqInput<'_>> = Vec::new();
        let mut which = Vec::new();
        for (i, s) in seqs.iter_mut().enumerate() {
            if !s.feed.is_empty() {
                which.push(i);
                batch.push(SeqInput {
                    cache: &mut s.cache,
                    tokens: &s.feed,
                    all_logits: false,
                });
            }
        }
        let logits = model
            .forward(&mut batch, &mut LocalExperts::default(), &mut NoObserver)
            .unwrap();
        drop(batch);
        for (i, l) in which.into_iter().zip(logits) {
            let s = &mut seqs[i];
            if s.next.take().is_none() {
                s.prefilled += s.feed.len();
                if s.prefilled < s.prompt.len() {
                    continue;
                }
            }
            s.next = Some(argmax(&l));
            s.logits.push(l);
        }
    }
    seqs.into_iter().map(|s| s.logits).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Every fixture model in `mode`: batched, chunked decoding gives each sequence the logits it
/// gets alone, bit for bit.
fn assert_batch_invariant(mode: moe_kernels::NumericMode) {
    for (path, prompts) in fixture_models() {
        let model = Model::open(&path).unwrap().with_mode(mode);
        let together = batched(&model, &prompts);
        for (p, (prompt, got)) in prompts.iter().zip(&together).enumerate() {
            let want = alone(&model, prompt);
            assert_eq!(got.len(), want.len(), "{}: prompt {p}", path.display());
            for (step, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    bits(g) == bits(w),
                    "{} ({mode:?}): prompt {p}, step {step}: batched logits differ from alone",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn batched_chunked_decoding_gives_the_same_bits_as_alone() {
    assert_batch_invariant(moe_kernels::NumericMode::Exact);
}

/// The same in Fast mode: activations are rounded to int8 per token row and block, so a
/// token's numbers still depend only on its own row.
#[test]
fn fast_mode_batched_chunked_decoding_gives_the_same_bits_as_alone() {
    assert_batch_invariant(moe_kernels::NumericMode::Fast);
}
