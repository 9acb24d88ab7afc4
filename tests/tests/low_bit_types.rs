//! The low-bit GGUF types of real Kimi K2.5 / DeepSeek downloads (IQ1/IQ2/IQ3 grids, TQ)
//! load and run end to end: `moe-node synth --preset kq` writes a model whose matrices are
//! stored in the type (stand-in blocks, see `moe_kernels::synthesize_row`), and `logits`
//! (exact and fast) and `bench` (both modes) run it through the real binary. Exact logits
//! must be finite, fast logits finite and close to exact (the fast kernels compute the same
//! model up to activation rounding), and the file must really hold the type (not a
//! fallback).

use std::path::Path;

use moe_devdata::npy;
use moe_kernels::GgmlType;
use moe_model::gguf::GgufFile;
use moe_tests::cluster::TempDir;
use moe_tests::moe_node_ok;

/// Largest allowed `‖fast − exact‖ / ‖exact‖` over all logits of the prompt: activation
/// rounding to int8 in every matmul of two layers moves random-weight logits by a few
/// percent (Q4_K, IQ4_XS: 0.06-0.08 on this model; expert selections that flip among 384
/// experts add to it); a wrongly decoded block or scale moves them by order one.
const FAST_REL_L2_MAX: f64 = 0.15;

/// Smallest `‖logits(0) − logits(1)‖ / ‖logits(0)‖` of two positions of the prompt: random
/// models give order one; a model whose stand-in weights push every row one way (a biased
/// stand-in format) gives the same logits everywhere.
const POSITIONS_REL_L2_MIN: f64 = 0.3;

/// Teacher-forced prompt (token ids of the synth vocabulary).
const TOKENS: &str = "5,300,17,42,900,8,77,512";

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

fn logits(model: &Path, mode: &str, out: &Path) -> Vec<f32> {
    moe_node_ok(&[
        "logits",
        "-m",
        s(model),
        "--tokens",
        TOKENS,
        "--out",
        s(out),
        mode,
    ]);
    let l = npy::read_f32(out).expect("logits .npy");
    assert_eq!(l.shape, [8, 1024], "{mode} logits shape");
    l.data
}

fn check_type(ty: GgmlType) {
    let dir = TempDir::new(&format!("lowbit-{}", ty.name()));
    let model = dir.path().join("m.gguf");
    moe_node_ok(&[
        "synth",
        "--out",
        s(&model),
        "--preset",
        "kq",
        "--type",
        ty.name(),
        "--seed",
        "3",
    ]);
    {
        let g = GgufFile::open(&model).expect("open the synth model");
        for name in [
            "blk.1.ffn_up_exps.weight",
            "blk.1.ffn_down_exps.weight",
            "blk.0.attn_q_b.weight",
            "output.weight",
        ] {
            let info = g.tensor_info(name).expect("tensor");
            assert_eq!(info.ty, ty, "{name} is stored as {:?}", info.ty);
        }
    }

    let exact = logits(&model, "--exact", &dir.path().join("exact.npy"));
    let fast = logits(&model, "--fast", &dir.path().join("fast.npy"));
    assert!(exact.iter().all(|v| v.is_finite()), "{ty:?}: exact logits");
    assert!(fast.iter().all(|v| v.is_finite()), "{ty:?}: fast logits");
    // The model is not degenerate (the comparison below would be vacuous if every position
    // had the same logits): the first two positions' logits differ by a sizeable fraction.
    let (r0, r1) = (&exact[..1024], &exact[1024..2048]);
    let apart: f64 = r0
        .iter()
        .zip(r1)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let size: f64 = r0.iter().map(|a| (*a as f64).powi(2)).sum();
    assert!(
        (apart / size).sqrt() > POSITIONS_REL_L2_MIN,
        "{ty:?}: positions 0 and 1 have nearly the same logits"
    );
    let (mut diff, mut norm) = (0f64, 0f64);
    for (f, e) in fast.iter().zip(&exact) {
        diff += ((f - e) as f64).powi(2);
        norm += (*e as f64).powi(2);
    }
    let rel = (diff / norm).sqrt();
    eprintln!("{}: ‖fast − exact‖/‖exact‖ = {rel:.4}", ty.name());
    assert!(norm > 0.0, "{ty:?}: all-zero logits");
    assert!(
        rel <= FAST_REL_L2_MAX,
        "{ty:?}: fast logits differ from exact by {rel} (relative L2)"
    );

    for mode in ["--fast", "--exact"] {
        let table = moe_node_ok(&[
            "bench",
            "-m",
            s(&model),
            "-p",
            "8",
            "-n",
            "4",
            "-r",
            "1",
            mode,
        ]);
        assert!(
            table.contains("pp8") && table.contains("tg4"),
            "{ty:?} bench {mode}:\n{table}"
        );
    }
}

/// IQ2_XXS (the 2-bit grid of Unsloth's UD-IQ2 files) end to end.
#[test]
fn iq2_xxs_model_runs_in_both_modes() {
    check_type(GgmlType::IQ2_XXS);
}

/// IQ1_M (1.75-bit, `d` split across its scale words) end to end.
#[test]
fn iq1_m_model_runs_in_both_modes() {
    check_type(GgmlType::IQ1_M);
}

/// TQ1_0 (ternary, base-3 packing; Unsloth's UD-TQ1_0) end to end.
#[test]
fn tq1_0_model_runs_in_both_modes() {
    check_type(GgmlType::TQ1_0);
}
