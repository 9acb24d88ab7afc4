//! Prompt prefix reuse: the latent KV of prompt prefixes, kept in blocks of
//! [`PREFIX_BLOCK_TOKENS`] tokens, so that a request repeating an earlier prompt (a chat that
//! resends its conversation each turn) computes only what is new.
//!
//! Decides: what is kept and what is evicted. A block is keyed by a hash chained over every
//! token before and in it, and holds its tokens (checked on lookup, so a hash collision can
//! only miss, never reuse the wrong KV), its parent's key and its rows of every layer. A
//! lookup follows the chain from the first block as far as the prompt matches; an insert adds
//! the blocks a finished prompt computed. The least recently used blocks go first when the
//! budget ([`PrefixCache::new`]'s `budget_tokens`) is exceeded; a lookup refreshes a chain
//! from its end back to its start, so a parent is always used more recently than its
//! children and never evicted before them.
//!
//! Reuse never changes results: a position's KV depends only on the tokens up to it (the
//! forward pass computes each token's rows independently of how the prompt is batched or
//! chunked) and, for a fast-mode prompt's short tail, on where the prompt ends
//! ([`PromptForm`]): only the positions [`PromptForm::reusable`] names are kept, so a
//! sequence that starts from a cached prefix holds exactly the rows a cold run computes. At
//! least one prompt token is always left to compute, for the next token's logits.
//! Blocks keep rows as the cache stored them (in its [`moe_kernels::KvType`], already rounded),
//! so a restored prefix holds the very bits a cold run writes; a cache of another type is
//! refused on restore, never converted.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use moe_kernels::{KvBuf, KvRows};

use super::{KvCache, PromptForm};
use crate::ModelError;

/// Tokens per cached block: a prompt is reused in whole blocks.
pub const PREFIX_BLOCK_TOKENS: usize = 32;

/// One cached block.
struct Block {
    parent: Option<u64>,
    tokens: Vec<u32>,
    /// `[layer]` rows of the block's positions, in the type of the cache they came from.
    rows: Vec<KvBuf>,
    last_used: u64,
}

/// The cached prefix blocks of earlier prompts, bounded by a token budget.
pub struct PrefixCache {
    blocks: HashMap<u64, Block>,
    budget_tokens: usize,
    clock: u64,
    /// The form of the prompts whose KV is kept (which of their positions may be reused).
    form: PromptForm,
}

/// What [`PrefixCache::restore`] reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reused {
    /// Prompt tokens whose KV came from the cache.
    pub tokens: usize,
}

fn chain_key(parent: Option<u64>, tokens: &[u32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl PrefixCache {
    /// An empty cache holding at most `budget_tokens` tokens' KV (0 disables it) of prompts
    /// computed in `form` ([`crate::model::Model::prompt_form`]).
    pub fn new(budget_tokens: usize, form: PromptForm) -> Self {
        Self {
            blocks: HashMap::new(),
            budget_tokens,
            clock: 0,
            form,
        }
    }

    /// Tokens held.
    pub fn tokens(&self) -> usize {
        self.blocks.len() * PREFIX_BLOCK_TOKENS
    }

    /// The keys of the cached chain matching the longest prefix of `prompt` that leaves at
    /// least one token to compute.
    fn matching_chain(&self, prompt: &[u32]) -> Vec<u64> {
        let usable = prompt.len().saturating_sub(1) / PREFIX_BLOCK_TOKENS;
        let mut chain = Vec::new();
        let mut parent = None;
        for block in prompt.chunks_exact(PREFIX_BLOCK_TOKENS).take(usable) {
            let key = chain_key(parent, block);
            match self.blocks.get(&key) {
                Some(b) if b.parent == parent && b.tokens == block => chain.push(key),
                _ => break,
            }
            parent = Some(key);
        }
        chain
    }

    /// Fills an empty `cache` with the longest cached prefix of `prompt` (whole blocks, at
    /// least one token left to compute) and returns how many tokens it holds now.
    pub fn restore(&mut self, prompt: &[u32], cache: &mut KvCache) -> Result<Reused, ModelError> {
        if !cache.is_empty() {
            return Err(ModelError::InvalidInput(
                "a prefix is restored only into an empty cache".into(),
            ));
        }
        let chain = self.matching_chain(prompt);
        if chain.is_empty() {
            return Ok(Reused::default());
        }
        let n = chain.len() * PREFIX_BLOCK_TOKENS;
        // Block by block straight into the cache (no joined copy); a failure leaves it empty.
        for key in &chain {
            let views: Vec<KvRows<'_>> = self.blocks[key].rows.iter().map(KvBuf::all).collect();
            if let Err(e) = cache.extend_rows(PREFIX_BLOCK_TOKENS, &views) {
                cache.truncate(0);
                return Err(e);
            }
        }
        // Refresh from the end back, so parents stay more recent than their children.
        for key in chain.iter().rev() {
            self.clock += 1;
            if let Some(b) = self.blocks.get_mut(key) {
                b.last_used = self.clock;
            }
        }
        Ok(Reused { tokens: n })
    }

    /// Keeps the whole blocks of `prompt`'s reusable positions whose KV `cache` holds (the
    /// cache of the sequence that computed it), then evicts down to the budget.
    pub fn insert(&mut self, prompt: &[u32], cache: &KvCache) {
        if self.budget_tokens < PREFIX_BLOCK_TOKENS {
            return;
        }
        let reusable = self.form.reusable(prompt.len());
        let full = reusable.min(cache.len()) / PREFIX_BLOCK_TOKENS;
        let mut parent = None;
        let mut chain = Vec::with_capacity(full);
        for (i, block) in prompt
            .chunks_exact(PREFIX_BLOCK_TOKENS)
            .take(full)
            .enumerate()
        {
            let key = chain_key(parent, block);
            let fresh = match self.blocks.get(&key) {
                Some(b) if b.parent == parent && b.tokens == block => false,
                // A collision with another chain: leave that one, stop here.
                Some(_) => break,
                None => true,
            };
            if fresh {
                let positions = i * PREFIX_BLOCK_TOKENS..(i + 1) * PREFIX_BLOCK_TOKENS;
                let rows = (0..cache.n_layers())
                    .map(|l| KvBuf::from_rows(&cache.rows(l, positions.clone())))
                    .collect();
                self.blocks.insert(
                    key,
                    Block {
                        parent,
                        tokens: block.to_vec(),
                        rows,
                        last_used: 0,
                    },
                );
            }
            chain.push(key);
            parent = Some(key);
        }
        for key in chain.iter().rev() {
            self.clock += 1;
            if let Some(b) = self.blocks.get_mut(key) {
                b.last_used = self.clock;
            }
        }
        self.evict();
    }

    /// Drops least recently used blocks until the budget holds.
    fn evict(&mut self) {
        let over = self.tokens().saturating_sub(self.budget_tokens);
        if over == 0 {
            return;
        }
        let mut by_age: Vec<(u64, u64)> =
            self.blocks.iter().map(|(&k, b)| (b.last_used, k)).collect();
        by_age.sort_unstable();
        for (_, key) in by_age.into_iter().take(over.div_ceil(PREFIX_BLOCK_TOKENS)) {
            self.blocks.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moe_kernels::{KvRowShape, KvType};

    /// The sizes of a small cache: layers, latent width, rope width.
    const SHAPE: (usize, usize, usize) = (3, 8, 4);

    fn empty_of(ty: KvType) -> KvCache {
        let shape = KvRowShape {
            latent: SHAPE.1,
            rope: SHAPE.2,
        };
        KvCache::with_shape(SHAPE.0, shape, ty, 4096)
    }

    fn empty() -> KvCache {
        empty_of(KvType::F32)
    }

    fn cache_for(tokens: &[u32]) -> KvCache {
        cache_of(KvType::F32, tokens)
    }

    /// A cache of type `ty` whose row values encode (layer, token, index).
    fn cache_of(ty: KvType, tokens: &[u32]) -> KvCache {
        let mut c = empty_of(ty);
        for l in 0..SHAPE.0 {
            for &t in tokens {
                let row: Vec<f32> = (0..SHAPE.1 + SHAPE.2)
                    .map(|i| (l * 100_000 + t as usize * 10 + i) as f32)
                    .collect();
                c.push(l, &row[..SHAPE.1], &row[SHAPE.1..]);
            }
        }
        c.commit(tokens.len());
        c
    }

    /// For every KV type: a longer prompt gets the earlier prompt's whole blocks, holding the
    /// bits a cold cache of that type holds; a cache of another type is refused and left empty.
    #[test]
    fn a_longer_prompt_reuses_the_earlier_prompt_s_whole_blocks_with_the_same_rows() {
        for ty in KvType::ALL {
            let first: Vec<u32> = (0..100).collect();
            let mut pc = PrefixCache::new(10_000, PromptForm::Absorbed);
            pc.insert(&first, &cache_of(ty, &first));
            assert_eq!(pc.tokens(), 96);

            let mut second = first.clone();
            second.extend(500..540);
            let mut c = empty_of(ty);
            let reused = pc.restore(&second, &mut c).unwrap();
            assert_eq!(reused.tokens, 96);
            let cold = cache_of(ty, &second[..96]);
            let bits = |c: &KvCache, l: usize| -> Vec<u32> {
                c.rows(l, 0..96)
                    .to_f32()
                    .iter()
                    .map(|x| x.to_bits())
                    .collect()
            };
            for l in 0..SHAPE.0 {
                assert_eq!(c.rows(l, 0..96).kv_type(), ty);
                assert_eq!(c.rows(l, 0..96).bytes(), cold.rows(l, 0..96).bytes());
                assert_eq!(bits(&c, l), bits(&cold, l), "{ty} layer {l}");
            }
            let other = if ty == KvType::F32 {
                KvType::Q8_0
            } else {
                KvType::F32
            };
            let mut wrong = empty_of(other);
            assert!(
                pc.restore(&second, &mut wrong).is_err(),
                "{ty} into {other}"
            );
            assert!(wrong.is_empty());
        }
    }

    #[test]
    fn at_least_one_token_is_left_to_compute_and_a_different_prefix_misses() {
        let p: Vec<u32> = (0..64).collect();
        let mut pc = PrefixCache::new(10_000, PromptForm::Absorbed);
        pc.insert(&p, &cache_for(&p));
        // The same 64-token prompt again: only the first block, the last token is computed.
        let mut c = empty();
        assert_eq!(pc.restore(&p, &mut c).unwrap().tokens, 32);
        // A prompt differing in its first token shares nothing.
        let mut q = p.clone();
        q[0] = 999;
        let mut c = empty();
        assert_eq!(pc.restore(&q, &mut c).unwrap().tokens, 0);
        assert!(c.is_empty());
    }

    #[test]
    fn the_budget_evicts_least_recently_used_chains_children_first() {
        let a: Vec<u32> = (0..64).collect();
        let b: Vec<u32> = (1000..1064).collect();
        let mut pc = PrefixCache::new(128, PromptForm::Absorbed);
        pc.insert(&a, &cache_for(&a));
        pc.insert(&b, &cache_for(&b));
        assert_eq!(pc.tokens(), 128);
        // Use a's first block again (a's second block is now the least recent), then add a
        // third chain of one block: a's second block goes, never a root before its child.
        let mut c = empty();
        assert_eq!(pc.restore(&a[..40], &mut c).unwrap().tokens, 32);
        let d: Vec<u32> = (2000..2032).collect();
        pc.insert(&d, &cache_for(&d));
        assert_eq!(pc.tokens(), 128);
        let hit = |pc: &mut PrefixCache, p: &[u32]| {
            let mut c = empty();
            pc.restore(p, &mut c).unwrap().tokens
        };
        let longer = |p: &[u32]| [p, &[7]].concat();
        assert_eq!(hit(&mut pc, &longer(&b)), 64, "b stays whole");
        assert_eq!(
            hit(&mut pc, &longer(&a)),
            32,
            "a's root stays, its child went"
        );
        assert_eq!(hit(&mut pc, &longer(&d)), 32);
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        let p: Vec<u32> = (0..64).collect();
        let mut pc = PrefixCache::new(0, PromptForm::Absorbed);
        pc.insert(&p, &cache_for(&p));
        assert_eq!(pc.tokens(), 0);
    }
}
