//! Replays the engine's n-gram drafting ([`moe_engine::draft::ngram_draft`], the function the
//! generation loop calls) over a known output: the acceptance rate and tokens per step that
//! speculative decoding reaches on a model whose greedy output is that text. A random-weight
//! model does not copy its prompt, so acceptance on a copy-heavy task cannot be measured by
//! generating with one; this replays the drafter against the output such a task has.
//!
//! Each step, as in `engine.rs`: the history is the prompt plus every emitted token (ending
//! with the pending one); the draft is at most `k` tokens; the verify forward accepts the
//! draft's longest prefix that equals the output and emits one more token (the one sampled
//! after the last accepted position). With per-step costs (ms of a forward over `j` tokens,
//! from `moe-node bench -v`), the time of the whole output is the sum over steps of the cost
//! of `1 + draft length` tokens (linear between measured `j`), against `n` plain steps.
//!
//! ```text
//! cargo run --release -p moe-engine --example draft_acceptance -- PROMPT_IDS OUTPUT_IDS \
//!     [K,K,...] [J:MS,J:MS,...]
//! ```
//! The id files hold token ids as `moe-node tokenize` prints them (a JSON array).

use moe_engine::draft::replay;

/// Cost (ms) of a forward over `j` tokens, linear between the measured points (flat beyond).
fn cost(costs: &[(usize, f64)], j: usize) -> f64 {
    let (mut lo, mut hi) = (costs[0], costs[costs.len() - 1]);
    for &(cj, c) in costs {
        if cj <= j {
            lo = (cj, c);
        }
        if cj >= j && hi.0 >= cj {
            hi = (cj, c);
            break;
        }
    }
    if hi.0 == lo.0 {
        return if j > hi.0 {
            hi.1 * j as f64 / hi.0 as f64
        } else {
            lo.1
        };
    }
    lo.1 + (hi.1 - lo.1) * (j - lo.0) as f64 / (hi.0 - lo.0) as f64
}

fn read_ids(path: &str) -> Vec<u32> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .unwrap_or_else(|e| panic!("{path}: token id {s:?}: {e}"))
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: draft_acceptance PROMPT_IDS OUTPUT_IDS [K,K,...] [J:MS,J:MS,...]");
        std::process::exit(2);
    }
    let prompt = read_ids(&args[0]);
    let output = read_ids(&args[1]);
    let ks: Vec<usize> = args
        .get(2)
        .map_or("2,4,8", String::as_str)
        .split(',')
        .map(|k| k.parse().expect("draft length"))
        .collect();
    let mut costs: Vec<(usize, f64)> = args.get(3).map_or_else(Vec::new, |s| {
        s.split(',')
            .map(|p| {
                let (j, ms) = p.split_once(':').expect("J:MS");
                (j.parse().expect("J"), ms.parse().expect("MS"))
            })
            .collect()
    });
    costs.sort_by_key(|&(j, _)| j);
    println!(
        "prompt {} tokens, output {} tokens",
        prompt.len(),
        output.len()
    );
    println!("| draft max | steps | drafted | accepted | acceptance | tokens per step | speedup |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for k in ks {
        let r = replay(&prompt, &output, k);
        let generated = output.len().saturating_sub(1);
        let speedup = if costs.is_empty() || r.steps == 0 {
            "-".to_string()
        } else {
            let spec: f64 = r.fed.iter().map(|&j| cost(&costs, j)).sum();
            format!("{:.2}", generated as f64 * cost(&costs, 1) / spec)
        };
        println!(
            "| {k} | {} | {} | {} | {:.3} | {:.2} | {speedup} |",
            r.steps,
            r.drafted,
            r.accepted,
            r.accepted as f64 / r.drafted.max(1) as f64,
            generated as f64 / r.steps.max(1) as f64,
        );
    }
}
