//! The engine against the reference fixtures (`../shared/fixtures`): for every GGUF and every
//! case, routing at every MoE layer and position, argmax and logits (teacher-forced prompt
//! pass), hidden states, and the 16-token greedy continuation through the KV-cache decode path.

use std::path::PathBuf;

use moe_devdata::fixtures::{fixture_cases, ids};
use moe_devdata::npy;
use moe_model::forward::{
    KvCache, LocalExperts, NoObserver, Observer, Routing, SeqInput, TokenKind,
};
use moe_model::model::Model;

/// Largest accepted |logit - reference| (the bound; an exact f32 forward gets ~1.5e-5).
const LOGIT_ABS_TOL: f32 = 2e-3;
/// Largest accepted |hidden - reference|, relative to the largest |reference| of the layer.
const HIDDEN_REL_TOL: f32 = 1e-4;

#[derive(Default)]
struct Capture {
    routing: Vec<(usize, Routing)>,
    hidden: Vec<Vec<f32>>,
}

impl Observer for Capture {
    fn hidden(&mut self, index: usize, rows: &[f32]) {
        assert_eq!(index, self.hidden.len());
        self.hidden.push(rows.to_vec());
    }
    fn routing(&mut self, layer: usize, routing: &Routing) {
        self.routing.push((layer, routing.clone()));
    }
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}

fn check_model(dir: &str) -> Vec<String> {
    let mut report = Vec::new();
    let mut open: Option<(PathBuf, Model)> = None;
    for fc in fixture_cases(dir).expect("the fixture manifest") {
        if open.as_ref().is_none_or(|(path, _)| *path != fc.gguf) {
            open = Some((fc.gguf.clone(), Model::open(&fc.gguf).unwrap()));
        }
        let Some((_, model)) = &open else {
            unreachable!("opened above")
        };
        {
            let (case, ref_dir, tokens, limit, what) =
                (&fc.json, &fc.ref_dir, &fc.tokens, fc.limit, &fc.what);
            let vocab = model.cfg.vocab;
            let d = model.cfg.n_embd;

            let mut cache = KvCache::for_model(model, 4096);
            let mut cap = Capture::default();
            let logits = model
                .forward(
                    &mut [SeqInput {
                        cache: &mut cache,
                        tokens,
                        all_logits: true,
                        kind: TokenKind::Prompt { len: tokens.len() },
                    }],
                    &mut LocalExperts::default(),
                    &mut cap,
                )
                .unwrap()
                .remove(0);

            // Routing.
            for (layer, r) in &cap.routing {
                let reference = &case["routing"][layer.to_string()];
                for pos in 0..limit {
                    let want = ids(&reference["experts"][pos], what).unwrap();
                    let (got, w) = r.token(pos);
                    assert_eq!(
                        got,
                        &want[..],
                        "{what}: layer {layer} position {pos} routing"
                    );
                    for (j, wv) in w.iter().enumerate() {
                        let rw = reference["weights"][pos][j].as_f64().unwrap() as f32;
                        assert!(
                            (wv - rw).abs() < 1e-4,
                            "{what}: layer {layer} pos {pos} weight {j}: {wv} vs {rw}"
                        );
                    }
                }
            }
            // Logits and argmax.
            let ref_logits =
                npy::read_f32(&ref_dir.join(case["logits"].as_str().unwrap())).unwrap();
            assert_eq!(ref_logits.shape, vec![tokens.len(), vocab]);
            let mut max_diff = 0f32;
            for pos in 0..limit {
                let got = &logits[pos * vocab..(pos + 1) * vocab];
                let want = &ref_logits.data[pos * vocab..(pos + 1) * vocab];
                assert_eq!(
                    argmax(got),
                    argmax(want),
                    "{what}: argmax at position {pos}"
                );
                for (a, b) in got.iter().zip(want) {
                    max_diff = max_diff.max((a - b).abs());
                }
            }
            assert!(
                max_diff <= LOGIT_ABS_TOL,
                "{what}: max |logit diff| {max_diff:e} > {LOGIT_ABS_TOL:e}"
            );
            // Hidden states.
            let ref_hidden =
                npy::read_f32(&ref_dir.join(case["hidden_states"].as_str().unwrap())).unwrap();
            assert_eq!(
                ref_hidden.shape,
                vec![model.cfg.n_layers + 1, tokens.len(), d]
            );
            let mut max_hidden_rel = 0f32;
            for (i, got) in cap.hidden.iter().enumerate() {
                let want = &ref_hidden.data[i * tokens.len() * d..(i + 1) * tokens.len() * d];
                let scale = want[..limit * d]
                    .iter()
                    .fold(0f32, |m, v| m.max(v.abs()))
                    .max(1e-6);
                for (a, b) in got[..limit * d].iter().zip(&want[..limit * d]) {
                    max_hidden_rel = max_hidden_rel.max((a - b).abs() / scale);
                }
            }
            assert!(
                max_hidden_rel <= HIDDEN_REL_TOL,
                "{what}: hidden states differ by {max_hidden_rel:e} (relative)"
            );

            // Greedy continuation through one-token decode steps (only if no tie exempts it).
            let want_cont = ids(&case["greedy_continuation"], what).unwrap();
            let mut cont = Vec::new();
            if limit == tokens.len() {
                let mut cache = KvCache::for_model(model, 4096);
                let mut last = model
                    .forward(
                        &mut [SeqInput {
                            cache: &mut cache,
                            tokens,
                            all_logits: false,
                            kind: TokenKind::Prompt { len: tokens.len() },
                        }],
                        &mut LocalExperts::default(),
                        &mut NoObserver,
                    )
                    .unwrap()
                    .remove(0);
                for _ in 0..want_cont.len() {
                    let next = argmax(&last) as u32;
                    cont.push(next);
                    last = model
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
                assert_eq!(cont, want_cont, "{what}: greedy continuation");
            }
            report.push(format!(
                "{what}: {} positions checked of {}, max|dlogit| {max_diff:.2e}, hidden rel {max_hidden_rel:.2e}, continuation {}",
                limit,
                tokens.len(),
                if limit == tokens.len() { "checked" } else { "exempt (near tie)" }
            ));
        }
    }
    report
}

#[test]
fn kimi_k25_tiny_matches_reference() {
    for line in check_model("kimi-k25-tiny") {
        println!("{line}");
    }
}

#[test]
fn kimi_k25_kq_matches_reference() {
    for line in check_model("kimi-k25-kq") {
        println!("{line}");
    }
}
