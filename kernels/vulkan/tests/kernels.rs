//! Kernel-level checks: every matvec shader (one per weight type) against the CPU's exact
//! kernel on the same quantized bytes, on Vulkan device 0 (lavapipe in CI).

mod common;

use moe_kernels::{dequantize_rows, quantize_rows, synthesize_row, GgmlType, NumericMode, QMatrix};
use moe_vulkan::Matvec;

/// Largest accepted |device - CPU| of one output, relative to `Σ|w_i·x_i|` of its row: the
/// two sum the same f32 products in different orders (and the device may fuse multiply-adds).
const MATVEC_REL_TOL: f32 = 2e-6;

/// Deterministic values in [-1, 1) (a 64-bit LCG), with a few larger outliers so scales vary.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|i| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
            if i % 97 == 0 {
                v * 8.0
            } else {
                v
            }
        })
        .collect()
}

/// `w` (`[rows, cols]`) as blocks of `ty`: quantized where moe-kernels has a quantizer, else
/// (IQ4_NL, IQ4_XS) stand-in blocks (pseudo-random codes and sub-block scales, `d` from the
/// block's RMS): a matvec check needs valid bytes of the type, not a close approximation.
fn weight_bytes(ty: GgmlType, w: &[f32], cols: usize) -> Vec<u8> {
    let row_bytes = ty.row_bytes(cols).unwrap();
    let mut bytes = vec![0u8; row_bytes * (w.len() / cols)];
    if ty.can_quantize() {
        quantize_rows(ty, w, cols, &mut bytes).unwrap();
    } else {
        for (src, dst) in w.chunks_exact(cols).zip(bytes.chunks_exact_mut(row_bytes)) {
            synthesize_row(ty, src, dst).unwrap();
        }
    }
    bytes
}

/// Each shader's rows of a 40x512 matrix (two 256-value super-blocks per row) times three
/// activation rows match the CPU exact matmul on the same bytes within `MATVEC_REL_TOL`
/// (IQ4_NL and IQ4_XS included, on stand-in blocks with every grid index and 6-bit scale
/// in play); an unsupported type is a named error.
#[test]
fn every_matvec_shader_matches_the_cpu_exact_kernel() {
    let Some(device) = common::device_or_skip("every_matvec_shader_matches_the_cpu_exact_kernel")
    else {
        return;
    };
    let mut mv = Matvec::new(&device).expect("pipelines");
    // 11 rows: a full tile of ROUTE_TILE (8) and a partial one.
    let (rows, cols, n) = (40, 512, 11);
    let w = values(rows * cols, 1);
    let x = values(n * cols, 2);
    let types: Vec<GgmlType> = moe_vulkan::supported_types().collect();
    for want in [
        GgmlType::Q6_K,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
    ] {
        assert!(types.contains(&want), "{want:?} missing from {types:?}");
    }
    assert!(types.len() >= 15, "{types:?}");
    for ty in types {
        let bytes = weight_bytes(ty, &w, cols);
        let q = QMatrix::new(ty, rows, cols, &bytes)
            .unwrap()
            .with_mode(NumericMode::Exact);
        let mut cpu = vec![0f32; n * rows];
        q.matmul(&x, n, &mut cpu).unwrap();
        let gpu = mv.matmul(ty.name(), &q, &x, n).expect("device matmul");
        let mut deq = vec![0f32; rows * cols];
        dequantize_rows(ty, &bytes, cols, &mut deq).unwrap();
        let mut worst = 0f32;
        for t in 0..n {
            for r in 0..rows {
                let scale: f32 = (0..cols)
                    .map(|c| (deq[r * cols + c] * x[t * cols + c]).abs())
                    .sum::<f32>()
                    .max(1e-6);
                let (a, b) = (gpu[t * rows + r], cpu[t * rows + r]);
                worst = worst.max((a - b).abs() / scale);
            }
        }
        println!("{}: max |device - cpu| / sum|w x| = {worst:.2e}", ty.name());
        assert!(
            worst <= MATVEC_REL_TOL,
            "{}: device matvec differs from the CPU by {worst:e} (relative)",
            ty.name()
        );
    }
    // A type without a shader is refused with its name and the tensor's (all-zero blocks
    // are valid IQ2_XXS bytes).
    let ty = GgmlType::IQ2_XXS;
    let bytes = vec![0u8; ty.row_bytes(cols).unwrap() * rows];
    let q = QMatrix::new(ty, rows, cols, &bytes).unwrap();
    let err = mv
        .matmul("blk.9.ffn_up_exps.weight", &q, &x, n)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blk.9.ffn_up_exps.weight") && err.contains("IQ2_XXS"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// The fast mode's shaders (quantize.comp, matvec_fast.comp + fast/<type>.glsl) against an
// emulation of the same arithmetic written here from the GGUF block layouts
// (spec/MODELS.md): activations quantized per 32 values, exact integer dot products per
// 32-value chunk, the weight's integer sub-block scales and mins folded in as integers, the
// f32 scales applied last, and the chunks summed in the shader's order.
// ---------------------------------------------------------------------------------------

/// Words of one quantized activation block (`moe_vulkan::QBLOCK_WORDS`).
const QW: usize = moe_vulkan::QBLOCK_WORDS;

/// Largest accepted |device - emulation| of one fast matvec output, relative to the sum of
/// the magnitudes of the f32 terms it adds (`act_d·d·S` and `act_d·dmin·M` of every chunk):
/// the same integers and the same f32 steps in the same order, up to fused multiply-adds.
const FAST_EMULATION_REL_TOL: f64 = 1e-6;

/// One 32-value block quantized as the fast mode specifies (quantize.comp's header): codes
/// and scale.
fn quantize_block(x: &[f32]) -> ([i32; 32], f32) {
    let mut q = [0i32; 32];
    if x.iter().any(|v| !v.is_finite()) {
        return (q, f32::NAN);
    }
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 {
        return (q, 0.0);
    }
    let iscale = 127.0 / amax;
    if !iscale.is_finite() {
        return (q, 0.0);
    }
    for (c, v) in q.iter_mut().zip(x) {
        *c = ((v * iscale).round_ties_even() as i32).clamp(-127, 127);
    }
    (q, 1.0 / iscale)
}

/// One quantized block as the device wrote it: codes, scale, and the two 16-value code sums.
fn device_block(words: &[u32]) -> ([i32; 32], f32, [i32; 2]) {
    let mut q = [0i32; 32];
    for (l, c) in q.iter_mut().enumerate() {
        *c = (words[l / 4] >> (8 * (l % 4))) as u8 as i8 as i32;
    }
    let sums = [
        words[9] as u16 as i16 as i32,
        (words[9] >> 16) as u16 as i16 as i32,
    ];
    (q, f32::from_bits(words[8]), sums)
}

/// The quantize shader gives the emulation's codes and scales (a code may differ by one only
/// where `x / d` is within 1e-4 of a rounding tie, as a device's division may round its last
/// bit otherwise), 16-value sums equal to its own codes' sums, ties rounded to even, and zero,
/// underflowing and non-finite blocks as specified; rows of 40 values are a named error.
#[test]
fn the_quantize_shader_matches_its_emulation() {
    let Some(device) = common::device_or_skip("the_quantize_shader_matches_its_emulation") else {
        return;
    };
    let mut mv = Matvec::new(&device).expect("pipelines");
    let cols = 256;
    let mut x = values(6 * cols, 7);
    // Block 1: ties (amax 127, so x / d = x): 0.5, 1.5, 2.5, -0.5, -2.5, ...
    let ties = [127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 3.5];
    x[32..64].fill(0.0);
    x[32..32 + ties.len()].copy_from_slice(&ties);
    // Block 2: all zero; block 3: amax 1e-37 (127 / amax overflows); block 4: a NaN;
    // block 5: an infinity; block 6: one large value among small ones.
    x[64..96].fill(0.0);
    x[96..128].fill(0.0);
    x[100] = -1e-37;
    x[140] = f32::NAN;
    x[170] = f32::INFINITY;
    x[200] = -1e6;
    let words = mv.quantize(&x, cols).expect("device quantize");
    assert_eq!(words.len(), x.len() / 32 * QW);
    let mut near_ties = 0;
    for (b, (xb, wb)) in x.chunks_exact(32).zip(words.chunks_exact(QW)).enumerate() {
        let (want, want_d) = quantize_block(xb);
        let (got, got_d, sums) = device_block(wb);
        assert_eq!(
            sums,
            [got[..16].iter().sum::<i32>(), got[16..].iter().sum::<i32>()],
            "block {b}: 16-value sums"
        );
        if want_d.is_nan() {
            assert!(got_d.is_nan() && got == [0; 32], "block {b}: non-finite");
            continue;
        }
        assert!(
            (got_d - want_d).abs() <= 1e-6 * want_d.abs(),
            "block {b}: scale {got_d:e} vs {want_d:e}"
        );
        for l in 0..32 {
            if got[l] != want[l] {
                let v = (xb[l] * (127.0 / xb.iter().fold(0f32, |m, v| m.max(v.abs())))).abs();
                let tie = (v - v.floor() - 0.5).abs() < 1e-4;
                assert!(
                    tie && (got[l] - want[l]).abs() == 1,
                    "block {b} value {l} ({}): code {} vs {}",
                    xb[l],
                    got[l],
                    want[l]
                );
                near_ties += 1;
            }
        }
    }
    let (ties_got, _, _) = device_block(&words[QW..2 * QW]);
    assert_eq!(&ties_got[..10], &[127, 0, 2, 2, 0, -2, -2, 126, -126, 4]);
    for (b, what) in [(2, "zero"), (3, "underflowing")] {
        let (q, d, _) = device_block(&words[b * QW..(b + 1) * QW]);
        assert!(q == [0; 32] && d == 0.0, "{what} block: d {d}");
    }
    println!(
        "quantize: {} blocks, {near_ties} codes differ at near ties",
        x.len() / 32
    );
    // Rows that are not whole 32-value blocks are refused, not cut.
    let err = mv.quantize(&x[..80], 40).unwrap_err().to_string();
    assert!(err.contains("multiple of 32"), "{err}");
}

fn f16_at(b: &[u8], o: usize) -> f32 {
    half::f16::from_le_bytes([b[o], b[o + 1]]).to_f32()
}

/// How one 32-value chunk of a weight row combines with its activation block: the weight
/// codes, and the integers and scales the formula of its type takes (fast/<type>.glsl).
struct Chunk {
    codes: [i32; 32],
    form: Form,
}

enum Form {
    /// `act_d * (d * float(mul * S))` (Q8_0, IQ4_NL: mul 1; IQ4_XS: mul ls - 32).
    Scaled { d: f32, mul: i32 },
    /// `act_d * (d * float(sc0 * S0 + sc1 * S1))` (Q3_K, Q6_K: a scale per 16 values).
    Halves { d: f32, sc: [i32; 2] },
    /// `act_d * (d * float(sc * S) - dmin * float(m * A))` (Q4_K, Q5_K).
    Min32 { d: f32, dmin: f32, sc: i32, m: i32 },
    /// `act_d * (d * float(sc0 * S0 + sc1 * S1) - dmin * float(m0 * A0 + m1 * A1))` (Q2_K).
    Min16 {
        d: f32,
        dmin: f32,
        sc: [i32; 2],
        m: [i32; 2],
    },
}

const IQ4_GRID: [i32; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// Q4_K/Q5_K's 6-bit (scale, min) of sub-block `j` from the 12 bytes `s` (ggml's
/// `get_scale_min_k4`).
fn k4_scale_min(s: &[u8], j: usize) -> (i32, i32) {
    if j < 4 {
        ((s[j] & 63) as i32, (s[j + 4] & 63) as i32)
    } else {
        (
            ((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4)) as i32,
            ((s[j + 4] >> 4) | ((s[j] >> 6) << 4)) as i32,
        )
    }
}

/// Chunk `c` of a row of `ty` blocks (`row`: the row's bytes), decoded from the layout.
fn chunk(ty: GgmlType, row: &[u8], c: usize) -> Chunk {
    let mut codes = [0i32; 32];
    let form = match ty {
        GgmlType::Q8_0 => {
            let b = &row[c * 34..(c + 1) * 34];
            for (l, q) in codes.iter_mut().enumerate() {
                *q = b[2 + l] as i8 as i32;
            }
            Form::Scaled {
                d: f16_at(b, 0),
                mul: 1,
            }
        }
        GgmlType::IQ4_NL => {
            let b = &row[c * 18..(c + 1) * 18];
            for l in 0..16 {
                codes[l] = IQ4_GRID[(b[2 + l] & 15) as usize];
                codes[16 + l] = IQ4_GRID[(b[2 + l] >> 4) as usize];
            }
            Form::Scaled {
                d: f16_at(b, 0),
                mul: 1,
            }
        }
        GgmlType::IQ4_XS => {
            let b = &row[(c / 8) * 136..(c / 8 + 1) * 136];
            let ib = c % 8;
            let lo = (b[4 + ib / 2] >> (4 * (ib % 2))) & 15;
            let hi = ((u16::from_le_bytes([b[2], b[3]]) >> (2 * ib)) & 3) as u8;
            let qs = &b[8 + 16 * ib..8 + 16 * ib + 16];
            for l in 0..16 {
                codes[l] = IQ4_GRID[(qs[l] & 15) as usize];
                codes[16 + l] = IQ4_GRID[(qs[l] >> 4) as usize];
            }
            Form::Scaled {
                d: f16_at(b, 0),
                mul: (lo | (hi << 4)) as i32 - 32,
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let size = if ty == GgmlType::Q4_K { 144 } else { 176 };
            let b = &row[(c / 8) * size..(c / 8 + 1) * size];
            let j = c % 8;
            let (sc, m) = k4_scale_min(&b[4..16], j);
            let qs = if ty == GgmlType::Q4_K { 16 } else { 48 };
            for (l, q) in codes.iter_mut().enumerate() {
                let nib = (b[qs + 32 * (j / 2) + l] >> (4 * (j % 2))) & 15;
                let high = if ty == GgmlType::Q5_K {
                    ((b[16 + l] >> j) & 1) << 4
                } else {
                    0
                };
                *q = (nib | high) as i32;
            }
            Form::Min32 {
                d: f16_at(b, 0),
                dmin: f16_at(b, 2),
                sc,
                m,
            }
        }
        GgmlType::Q2_K => {
            let b = &row[(c / 8) * 84..(c / 8 + 1) * 84];
            let (n, s) = ((c % 8) / 4, c % 4);
            for (l, q) in codes.iter_mut().enumerate() {
                *q = ((b[16 + 32 * n + l] >> (2 * s)) & 3) as i32;
            }
            let sc = [b[8 * n + 2 * s], b[8 * n + 2 * s + 1]];
            Form::Min16 {
                d: f16_at(b, 80),
                dmin: f16_at(b, 82),
                sc: sc.map(|v| (v & 15) as i32),
                m: sc.map(|v| (v >> 4) as i32),
            }
        }
        GgmlType::Q3_K => {
            let b = &row[(c / 8) * 110..(c / 8 + 1) * 110];
            let (n, s) = ((c % 8) / 4, c % 4);
            for (l, q) in codes.iter_mut().enumerate() {
                let low = ((b[32 + 32 * n + l] >> (2 * s)) & 3) as i32;
                let high_set = (b[l] >> (4 * n + s)) & 1 != 0;
                *q = low - if high_set { 0 } else { 4 };
            }
            let scale = |i: usize| {
                let lo = if i < 8 {
                    b[96 + i] & 15
                } else {
                    b[96 + i - 8] >> 4
                };
                let hi = (b[104 + i % 4] >> (2 * (i / 4))) & 3;
                (lo | (hi << 4)) as i32 - 32
            };
            let i = 8 * n + 2 * s;
            Form::Halves {
                d: f16_at(b, 108),
                sc: [scale(i), scale(i + 1)],
            }
        }
        GgmlType::Q6_K => {
            let b = &row[(c / 8) * 210..(c / 8 + 1) * 210];
            let (h, k) = ((c % 8) / 4, c % 4);
            for (l, q) in codes.iter_mut().enumerate() {
                let low = (b[64 * h + 32 * (k % 2) + l] >> (4 * (k / 2))) & 15;
                let high = (b[128 + 32 * h + l] >> (2 * k)) & 3;
                *q = (low | (high << 4)) as i32 - 32;
            }
            let sc = 192 + 8 * h + 2 * k;
            Form::Halves {
                d: f16_at(b, 208),
                sc: [b[sc] as i8 as i32, b[sc + 1] as i8 as i32],
            }
        }
        other => panic!("no fast emulation for {other:?}"),
    };
    Chunk { codes, form }
}

/// The emulated fast matvec of one weight row with one quantized activation row (`act`,
/// device words): per chunk the f32 value of its type's formula and the magnitudes of its f32
/// terms, summed as the shader sums them (thread `t` adds chunks `t, t + 32, ...`, then a
/// fixed tree over 32 partials). Returns (value, Σ|terms|).
fn emulate_row(ty: GgmlType, row: &[u8], act: &[u32]) -> (f32, f64) {
    let mut partial = [0f32; 32];
    let mut magnitude = 0f64;
    for (c, words) in act.chunks_exact(QW).enumerate() {
        let (a, dx, _) = device_block(words);
        let ch = chunk(ty, row, c);
        let dot = |r: std::ops::Range<usize>| -> i32 { r.map(|l| ch.codes[l] * a[l]).sum() };
        let (s0, s1) = (dot(0..16), dot(16..32));
        let (a0, a1): (i32, i32) = (a[..16].iter().sum(), a[16..].iter().sum());
        let (pos, neg) = match ch.form {
            Form::Scaled { d, mul } => (d * (mul * (s0 + s1)) as f32, 0.0),
            Form::Halves { d, sc } => (d * (sc[0] * s0 + sc[1] * s1) as f32, 0.0),
            Form::Min32 { d, dmin, sc, m } => {
                (d * (sc * (s0 + s1)) as f32, dmin * (m * (a0 + a1)) as f32)
            }
            Form::Min16 { d, dmin, sc, m } => (
                d * (sc[0] * s0 + sc[1] * s1) as f32,
                dmin * (m[0] * a0 + m[1] * a1) as f32,
            ),
        };
        partial[c % 32] += dx * (pos - neg);
        magnitude += (dx as f64 * pos as f64).abs() + (dx as f64 * neg as f64).abs();
    }
    let mut s = 16;
    while s > 0 {
        for t in 0..s {
            partial[t] += partial[t + s];
        }
        s /= 2;
    }
    (partial[0], magnitude)
}

/// Every fast matvec shader (Q8_0, Q2_K..Q6_K, IQ4_NL, IQ4_XS) on a 40x512 matrix times three
/// activation rows:
/// - matches the emulation of its arithmetic (on the device's quantized activations, which
///   `the_quantize_shader_matches_its_emulation` checks) within `FAST_EMULATION_REL_TOL`,
///   so every code, scale and min is unpacked as the layout says;
/// - stays within the activation rounding bound of the CPU's exact kernel on the same bytes:
///   |fast - exact| <= Σ_i |w_i| · d_x(i) / 2 (each activation moved by at most half its
///   block's step), plus f32 slack of 1e-5 · Σ|w_i x_i|;
/// - and F32, F16, BF16 and Q4_0 have no fast shader (a named error).
#[test]
fn every_fast_matvec_shader_matches_its_emulation_and_the_cpu() {
    let Some(device) =
        common::device_or_skip("every_fast_matvec_shader_matches_its_emulation_and_the_cpu")
    else {
        return;
    };
    assert!(
        device.has_integer_dot_product(),
        "{}: no shaderIntegerDotProduct",
        device.info.name
    );
    let mut mv = Matvec::new(&device).expect("pipelines");
    // 11 rows: a full tile of ROUTE_TILE (8) and a partial one.
    let (rows, cols, n) = (40, 512, 11);
    let w = values(rows * cols, 1);
    let x = values(n * cols, 2);
    let act = mv.quantize(&x, cols).expect("device quantize");
    let row_words = cols / 32 * QW;
    let types: Vec<GgmlType> = moe_vulkan::fast_types().collect();
    assert_eq!(types.len(), 8, "{types:?}");
    for ty in types {
        let bytes = weight_bytes(ty, &w, cols);
        let row_bytes = ty.row_bytes(cols).unwrap();
        let q = QMatrix::new(ty, rows, cols, &bytes)
            .unwrap()
            .with_mode(NumericMode::Exact);
        let mut cpu = vec![0f32; n * rows];
        q.matmul(&x, n, &mut cpu).unwrap();
        let gpu = mv
            .matmul_fast(ty.name(), &q, &x, n)
            .expect("device fast matmul");
        let mut deq = vec![0f32; rows * cols];
        dequantize_rows(ty, &bytes, cols, &mut deq).unwrap();
        let (mut worst_emu, mut worst_cpu) = (0f64, 0f64);
        for t in 0..n {
            let act_t = &act[t * row_words..(t + 1) * row_words];
            for r in 0..rows {
                let got = gpu[t * rows + r];
                let (want, magnitude) =
                    emulate_row(ty, &bytes[r * row_bytes..(r + 1) * row_bytes], act_t);
                let rel = (got - want).abs() as f64 / magnitude.max(1e-30);
                worst_emu = worst_emu.max(rel);
                assert!(
                    rel <= FAST_EMULATION_REL_TOL,
                    "{}: row {r} token {t}: device {got:e}, emulation {want:e} (relative {rel:e})",
                    ty.name()
                );
                let (mut bound, mut wx) = (0f64, 0f64);
                for c in 0..cols {
                    let wv = deq[r * cols + c] as f64;
                    let dx = f32::from_bits(act_t[(c / 32) * QW + 8]) as f64;
                    bound += wv.abs() * dx / 2.0;
                    wx += (wv * x[t * cols + c] as f64).abs();
                }
                let bound = bound + 1e-5 * wx;
                let diff = (got - cpu[t * rows + r]).abs() as f64;
                worst_cpu = worst_cpu.max(diff / bound);
                assert!(
                    diff <= bound,
                    "{}: row {r} token {t}: |fast - exact| = {diff:e} > bound {bound:e}",
                    ty.name()
                );
            }
        }
        println!(
            "{}: fast vs emulation {worst_emu:.2e} (relative), vs the CPU exact kernel {:.0}% of the rounding bound",
            ty.name(),
            100.0 * worst_cpu
        );
    }
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q4_0] {
        let bytes = weight_bytes(ty, &w, cols);
        let q = QMatrix::new(ty, rows, cols, &bytes).unwrap();
        let err = mv
            .matmul_fast("blk.3.ffn_down_exps.weight", &q, &x, n)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("blk.3.ffn_down_exps.weight") && err.contains(ty.name()),
            "{err}"
        );
    }
}

/// `kv_store.comp` rounds new cache rows to BF16 and F16 exactly as the host's cache
/// (`moe_kernels::KvBuf`) does: round to nearest even (halfway cases both ways), F16
/// saturating at ±65504 and keeping its subnormals, signed zeros kept; on values across every
/// magnitude the caches meet and on each edge. (Equal values are what keep a cache's host
/// record and device copy equal: `layers.rs`' narrow-cache test checks that end to end.)
#[test]
fn the_kv_store_shader_rounds_as_the_host_cache() {
    use moe_kernels::{KvBuf, KvRowShape, KvType};
    let Some(device) = common::device_or_skip("the_kv_store_shader_rounds_as_the_host_cache")
    else {
        return;
    };
    let mut v: Vec<f32> = values(4096, 7)
        .into_iter()
        .enumerate()
        .map(|(i, x)| x * 2f32.powi((i % 48) as i32 - 30))
        .collect();
    let halfway = |bits: u32, drop: u32| f32::from_bits(bits | (1 << (drop - 1)));
    v.extend([
        0.0,
        -0.0,
        65504.0,
        65519.9,
        65520.0,
        -65520.0,
        70000.0,
        -1e30,
        6.0e-5,                   // just below f16's smallest normal
        6.1e-5,                   // just above it
        -3.0e-8,                  // below half of f16's smallest subnormal
        3.0e-8,                   // above it
        2f32.powi(-24),           // f16's smallest subnormal, exactly
        2f32.powi(-25),           // exactly half of it: rounds to even (zero)
        1.5 * 2f32.powi(-24),     // 1.5 subnormals: rounds to even (2)
        halfway(0x3f80_0000, 13), // 1 + half an f16 ulp: to even (1)
        halfway(0x3f80_2000, 13), // (1 + 1 ulp) + half: to even (1 + 2 ulp)
        halfway(0x3f80_0000, 16), // the same for bf16
        halfway(0x3f81_0000, 16),
    ]);
    for ty in [KvType::Bf16, KvType::F16] {
        let got = moe_vulkan::round_kv_on_device(&device, &v, ty).unwrap();
        let mut host = KvBuf::new(
            ty,
            KvRowShape {
                latent: v.len(),
                rope: 0,
            },
        );
        host.push(&v, &[]);
        let want = host.all().to_f32().into_owned();
        for (i, ((&x, w), g)) in v.iter().zip(&want).zip(&got).enumerate() {
            assert_eq!(
                w.to_bits(),
                g.to_bits(),
                "{ty:?} value {i} ({x:e}): host {w:e}, device {g:e}"
            );
        }
        println!("{ty:?}: {} values rounded as the host rounds them", v.len());
    }
    assert!(moe_vulkan::round_kv_on_device(&device, &v, KvType::Q8_0).is_err());
}
