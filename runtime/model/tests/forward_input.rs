//! A forward call whose prompt length is shorter than the prompt tokens it carries (a caller
//! error: the length picks fast mode's attention form per position) is refused with an
//! error naming both, and leaves the cache as it was.

use moe_kernels::NumericMode;
use moe_model::forward::{KvCache, LocalExperts, NoObserver, SeqInput, TokenKind};
use moe_model::model::Model;
use moe_model::ModelError;

#[test]
fn a_prompt_length_short_of_the_tokens_is_refused() {
    let path = moe_devdata::fixtures::fixtures_dir().join("kimi-k25-tiny/kimi-k25-tiny-Q8_0.gguf");
    let model = Model::open(&path).unwrap().with_mode(NumericMode::Fast);
    let mut cache = KvCache::for_model(&model, 64);
    let tokens = [447, 283, 72];
    let r = model.forward(
        &mut [SeqInput {
            cache: &mut cache,
            tokens: &tokens,
            all_logits: false,
            kind: TokenKind::Prompt { len: 2 },
        }],
        &mut LocalExperts::default(),
        &mut NoObserver,
    );
    match r {
        Err(ModelError::InvalidInput(why)) => {
            assert!(
                why.contains("position 3") && why.contains("prompt of 2"),
                "{why}"
            )
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert_eq!(cache.len(), 0, "the refused call left the cache as it was");
}
