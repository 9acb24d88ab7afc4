//! The engine's per-sequence hooks of issue #15 on the tiny fixture model:
//!
//! - a [`TokenConstraint`] masks the row the sampler and the tracker see, its `forced`
//!   token replaces sampling, `advance` sees every kept token, and a constrained sequence
//!   never drafts nor ignores EOS;
//! - several choices of one prompt ([`Engine::admit_group`]) give each choice exactly the
//!   tokens it gets alone with its seed (the forks start from a copy of the prompt's KV), the
//!   prompt's forward runs once, and every waiting choice counts in [`Engine::len`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use moe_devdata::fixtures::fixtures_dir;
use moe_engine::{Engine, EngineConfig, Request, TokenConstraint, Tracker};
use moe_model::forward::{ExpertBackend, LocalExperts, Routing};
use moe_model::model::Model;
use moe_model::sampling::SamplingParams;
use moe_model::tokenizer::Tokenizer;
use moe_model::ModelError;

/// Positions per sequence cache.
const CTX_POSITIONS: usize = 128;
/// Tokens generated per sequence.
const MAX_TOKENS: usize = 12;
/// The prompt (token ids of the tiny fixture's vocabulary).
const PROMPT: [u32; 5] = [1022, 65, 266, 985, 422];

fn model() -> (Model, Arc<Tokenizer>) {
    let path: PathBuf = fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-BF16.gguf");
    let model = Model::open(&path).expect("the tiny fixture");
    let tok = Arc::new(Tokenizer::from_gguf(model.file()).unwrap());
    (model, tok)
}

/// Allows only `allowed`; forces `force` for the last `reserve` tokens; logs what it saw.
struct OnlyThese {
    allowed: Vec<u32>,
    force: u32,
    reserve: usize,
    seen: Arc<Mutex<Vec<u32>>>,
}

impl TokenConstraint for OnlyThese {
    fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        for (i, l) in logits.iter_mut().enumerate() {
            if !self.allowed.contains(&(i as u32)) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }
    fn forced(&mut self, remaining_tokens: usize) -> Option<u32> {
        (remaining_tokens <= self.reserve).then_some(self.force)
    }
    fn advance(&mut self, token: u32) -> Result<(), String> {
        if !self.allowed.contains(&token) {
            return Err(format!("token {token} was masked"));
        }
        self.seen.lock().unwrap().push(token);
        Ok(())
    }
}

/// Records every kept token and the row it came from; `index`: admission order.
struct Recorder {
    index: usize,
    tokens: Vec<u32>,
    rows: Vec<Vec<f32>>,
}

impl Recorder {
    fn at(index: usize) -> Self {
        Self {
            index,
            tokens: Vec::new(),
            rows: Vec::new(),
        }
    }
}

impl Tracker for Recorder {
    fn sampled(&mut self, row: &[f32], token: u32) {
        self.tokens.push(token);
        self.rows.push(row.to_vec());
    }
}

/// Computes the experts in-process and counts the token rows of the first MoE layer.
#[derive(Default)]
struct Counting {
    inner: LocalExperts,
    first_layer: Option<usize>,
    rows: usize,
}

impl ExpertBackend for Counting {
    fn begin(
        &mut self,
        model: &Model,
        layer: usize,
        h: &[f32],
        routing: &Routing,
    ) -> Result<(), ModelError> {
        if *self.first_layer.get_or_insert(layer) == layer {
            self.rows += h.len() / model.cfg.n_embd;
        }
        self.inner.begin(model, layer, h, routing)
    }
    fn finish(&mut self, model: &Model, layer: usize, out: &mut [f32]) -> Result<(), ModelError> {
        self.inner.finish(model, layer, out)
    }
}

/// Runs the engine until every sequence ends; the recorders and finishes by admission
/// order, and the token rows computed.
fn run_counting(
    engine: &mut Engine<Recorder>,
    model: &Model,
    n: usize,
) -> (Vec<(Recorder, moe_engine::Finished)>, usize) {
    let mut experts = Counting::default();
    let mut out: Vec<Option<(Recorder, moe_engine::Finished)>> = (0..n).map(|_| None).collect();
    let mut steps = 0;
    while !engine.is_empty() {
        for e in engine.step(model, &mut experts) {
            let index = e.tag.index;
            out[index] = Some((e.tag, e.result.expect("the sequence succeeds")));
        }
        steps += 1;
        assert!(steps < 1000, "the engine does not finish");
    }
    let out = out
        .into_iter()
        .map(|o| o.expect("every sequence ended"))
        .collect();
    (out, experts.rows)
}

fn run_all(
    engine: &mut Engine<Recorder>,
    model: &Model,
    n: usize,
) -> Vec<(Recorder, moe_engine::Finished)> {
    run_counting(engine, model, n).0
}

fn sampling(seed: u64) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        seed,
        ..SamplingParams::default()
    }
}

#[test]
fn a_constraint_masks_the_sampled_row_forces_its_tail_and_disables_drafts() {
    let (model, tok) = model();
    let cfg = EngineConfig {
        draft_max: 4,
        ..EngineConfig::new(CTX_POSITIONS)
    };
    let mut engine = Engine::new(&model, tok, cfg);
    let allowed = vec![65u32, 266, 985, 422];
    let seen = Arc::new(Mutex::new(Vec::new()));
    let reserve = 3;
    let request = Request {
        sampling: sampling(11),
        // A constrained sequence never ignores EOS (here EOS is masked anyway).
        ignore_eos: true,
        constraint: Some(Box::new(OnlyThese {
            allowed: allowed.clone(),
            force: 422,
            reserve,
            seen: seen.clone(),
        })),
        ..Request::new(PROMPT.to_vec(), MAX_TOKENS)
    };
    engine
        .admit(&model, request, Recorder::at(0))
        .map_err(|(_, e)| e)
        .unwrap();
    let (rec, fin) = run_all(&mut engine, &model, 1).remove(0);
    assert_eq!(rec.tokens.len(), MAX_TOKENS);
    assert!(
        rec.tokens.iter().all(|t| allowed.contains(t)),
        "{:?}",
        rec.tokens
    );
    assert_eq!(
        &rec.tokens[MAX_TOKENS - reserve..],
        &[422; 3],
        "{:?}",
        rec.tokens
    );
    assert_eq!(
        *seen.lock().unwrap(),
        rec.tokens,
        "advance sees every kept token"
    );
    for row in &rec.rows {
        for (i, l) in row.iter().enumerate() {
            assert_eq!(
                l.is_finite(),
                allowed.contains(&(i as u32)),
                "the tracker's row is the masked one (token {i})"
            );
        }
    }
    assert_eq!(fin.decode.drafted, 0, "a constrained sequence never drafts");
    assert_eq!(fin.tail.token_ids.len(), MAX_TOKENS);
}

#[test]
fn choices_of_one_prompt_equal_their_seeds_alone() {
    let (model, tok) = model();
    let seeds = [5u64, 6, 7];
    // Alone, one at a time.
    let mut alone = Vec::new();
    for &seed in &seeds {
        let mut engine = Engine::new(&model, tok.clone(), EngineConfig::new(CTX_POSITIONS));
        let request = Request {
            sampling: sampling(seed),
            ignore_eos: true,
            ..Request::new(PROMPT.to_vec(), MAX_TOKENS)
        };
        engine
            .admit(&model, request, Recorder::at(0))
            .map_err(|(_, e)| e)
            .unwrap();
        alone.push(run_all(&mut engine, &model, 1).remove(0).0.tokens);
    }
    // As one group.
    let mut engine = Engine::new(&model, tok, EngineConfig::new(CTX_POSITIONS));
    let group = seeds
        .iter()
        .enumerate()
        .map(|(i, &seed)| {
            let request = Request {
                sampling: sampling(seed),
                ignore_eos: true,
                ..Request::new(PROMPT.to_vec(), MAX_TOKENS)
            };
            (request, Recorder::at(i))
        })
        .collect();
    engine
        .admit_group(&model, group)
        .map_err(|e| e.into_iter().map(|(_, e)| e).collect::<Vec<_>>())
        .unwrap();
    assert_eq!(engine.len(), 3, "waiting choices count as sequences");
    let (together, rows) = run_counting(&mut engine, &model, 3);
    // The prompt once, then each choice's fed tokens (all but its last).
    assert_eq!(
        rows,
        PROMPT.len() + 3 * (MAX_TOKENS - 1),
        "the prompt is computed once"
    );
    for (i, (rec, fin)) in together.iter().enumerate() {
        assert_eq!(rec.tokens, alone[i], "choice {i} (seed {})", seeds[i]);
        assert_eq!(fin.usage.prompt_tokens, PROMPT.len());
        assert_eq!(fin.usage.completion_tokens, MAX_TOKENS);
    }
    assert_ne!(alone[0], alone[1], "different seeds give different choices");
    // A group whose prompts differ is refused as a whole.
    let mut engine: Engine<Recorder> = Engine::new(
        &model,
        Arc::new(Tokenizer::from_gguf(model.file()).unwrap()),
        EngineConfig::new(CTX_POSITIONS),
    );
    let bad = vec![
        (Request::new(PROMPT.to_vec(), 2), Recorder::at(0)),
        (Request::new(PROMPT[..3].to_vec(), 2), Recorder::at(1)),
    ];
    let refused = engine
        .admit_group(&model, bad)
        .expect_err("different prompts");
    assert_eq!(refused.len(), 2);
    assert!(engine.is_empty());
}
