//! The last layer's FFN runs only on the rows whose logits are wanted when the observer does
//! not need every row (`Observer::needs_every_row`): the logits, the cache and a following
//! decode step keep the bits of computing every row, in both numeric modes, for a batch of two
//! sequences (one wanting only its last token's logits, one every token's).

use moe_kernels::NumericMode;
use moe_model::forward::{KvCache, LocalExperts, NoObserver, Observer, SeqInput, TokenKind};
use moe_model::model::Model;

/// An observer that needs every row (the default), recording nothing.
struct EveryRow;
impl Observer for EveryRow {}

/// The logits of a two-sequence prompt step and of one decode step after it.
fn run(model: &Model, obs: &mut dyn Observer) -> Vec<Vec<f32>> {
    let (mut a, mut b) = (KvCache::for_model(model, 64), KvCache::for_model(model, 64));
    let (ta, tb) = ([447u32, 283, 72, 9, 101], [5u32, 17, 300]);
    let mut out = model
        .forward(
            &mut [
                SeqInput {
                    cache: &mut a,
                    tokens: &ta,
                    all_logits: false,
                    kind: TokenKind::Prompt { len: ta.len() },
                },
                SeqInput {
                    cache: &mut b,
                    tokens: &tb,
                    all_logits: true,
                    kind: TokenKind::Prompt { len: tb.len() },
                },
            ],
            &mut LocalExperts::default(),
            obs,
        )
        .unwrap();
    let next = model
        .forward(
            &mut [SeqInput {
                cache: &mut a,
                tokens: &[77],
                all_logits: false,
                kind: TokenKind::Generated,
            }],
            &mut LocalExperts::default(),
            obs,
        )
        .unwrap();
    out.extend(next);
    out
}

#[test]
fn last_layer_on_the_logit_rows_keeps_the_bits() {
    for file in [
        "kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf",
        "kimi-k25-kq/kimi-k25-kq-Q4_K_M.gguf",
    ] {
        let path = moe_devdata::fixtures::fixtures_dir().join(file);
        for mode in [NumericMode::Exact, NumericMode::Fast] {
            let model = Model::open(&path).unwrap().with_mode(mode);
            let every = run(&model, &mut EveryRow);
            let logit_rows = run(&model, &mut NoObserver);
            assert_eq!(every.len(), 3);
            assert_eq!(
                every[0].len(),
                model.cfg.vocab,
                "one row for the first sequence"
            );
            assert_eq!(
                every[1].len(),
                3 * model.cfg.vocab,
                "every row of the second"
            );
            for (k, (e, o)) in every.iter().zip(&logit_rows).enumerate() {
                let same =
                    e.len() == o.len() && e.iter().zip(o).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{file} {mode:?}: logits {k} differ");
            }
        }
    }
}
