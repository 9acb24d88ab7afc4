//! SwiGLU FFNs on the CPU as one parallel region: the routed experts of a MoE layer (tokens
//! grouped per expert) and the dense FFNs (leading dense layers, shared experts). Each
//! FFN's activations are prepared once (quantized once in Fast mode, shared by gate and
//! up), then every (FFN × row block) of gate + up + SwiGLU runs as one job list on the pool,
//! then every (FFN × row block) of the down projection, then the weighted sum. One
//! fork/join per phase instead of one per matrix: a decode step of Kimi K2.5 runs 24 small
//! expert matrices per layer, each too short to split well on its own.
//!
//! Decides: the job shapes ([`EXPERT_ROWS_PER_JOB`], [`EXPERT_JOB_MACS_MIN`],
//! [`WAVE_JOBS_PER_THREAD`]) and the scratch bound (experts are taken in waves of at most
//! [`MOE_WAVE_ROUTES_MAX`] routes). Leaves the arithmetic to the kernels: a row's result depends only on the row and the token, so the bits equal those
//! of computing each expert alone, and the weighted sum adds experts into a token in
//! ascending expert order (the order [`super::ExpertCompute`]'s contract fixes).

use std::ops::Range;
use std::sync::Mutex;

use moe_kernels::{num_threads, run_jobs, PreparedActs, QMatrix, MATMUL_PARALLEL_MIN_MACS};

use super::ops::swiglu_inplace;
use super::route::Route;
use crate::model::DenseFfn;
use crate::model::Model;
use crate::ModelError;

/// Fewest weight rows per job, and the step of larger ones: a multiple of the panels' 8 rows;
/// 32 rows of a 7168-wide matrix are 230 k multiply-adds per token (a few microseconds),
/// enough to pay for taking a job and few enough that a decode step's 8 experts split over
/// 16 threads.
pub const EXPERT_ROWS_PER_JOB: usize = 32;

/// Fewest multiply-adds per job (weight rows · columns · tokens, gate and up counted
/// apart): narrower matrices get more rows per job, so a job streams a long run of weights
/// (measured on the small preset's 1024 × 256 experts, two threads, tg256: 64 Ki per job
/// 580-680 t/s Q4_K and 650-710 Q2_K, 256 Ki 740-840 and 920-1080, 512 Ki 700-790 and
/// 990-1160; the expert phase 400-610 µs -> 310-360 -> 210-350). At Kimi K2.5's widths a
/// decode job is 64 rows of gate + up (2 × 7168 columns) or 256 rows of down (2048).
pub const EXPERT_JOB_MACS_MIN: usize = 1 << 19;

/// Rows per job for a matrix of `cols` columns applied `per_row` times per row (tokens ·
/// matrices): [`EXPERT_ROWS_PER_JOB`] or the multiple of it that reaches
/// [`EXPERT_JOB_MACS_MIN`].
fn rows_per_job(cols: usize, per_row: usize) -> usize {
    let rows = EXPERT_JOB_MACS_MIN.div_ceil(cols.saturating_mul(per_row).max(1));
    rows.div_ceil(EXPERT_ROWS_PER_JOB).max(1) * EXPERT_ROWS_PER_JOB
}

/// Jobs per thread a phase of a wave is cut into at least, by halving the largest jobs (down
/// to [`EXPERT_ROWS_PER_JOB`] rows): a decode step's 8 experts (or one shared expert, or a
/// dense FFN's 11 blocks) in [`EXPERT_JOB_MACS_MIN`] jobs leave threads idle at the phase's
/// end for up to a whole job.
pub const WAVE_JOBS_PER_THREAD: usize = 2;

/// Rows per job of each FFN of a wave's phase over matrix `mat(ex)`, applied `per_row(ex)`
/// times per row (tokens · matrices): [`rows_per_job`], the costliest jobs halved until the
/// phase has [`WAVE_JOBS_PER_THREAD`] jobs per thread or none can be halved.
fn job_rows<'a>(
    wave: &'a [Expert<'a>],
    mat: impl Fn(&'a Expert<'a>) -> &'a QMatrix<'a>,
    per_row: impl Fn(&Expert<'_>) -> usize,
    threads: usize,
) -> Vec<usize> {
    let unit = EXPERT_ROWS_PER_JOB;
    let rows: Vec<usize> = wave.iter().map(|ex| mat(ex).rows()).collect();
    let row_cost: Vec<usize> = wave.iter().map(|ex| per_row(ex) * mat(ex).cols()).collect();
    let mut per: Vec<usize> = wave
        .iter()
        .zip(&rows)
        .map(|(ex, &r)| {
            let p = rows_per_job(mat(ex).cols(), per_row(ex));
            p.min(r.div_ceil(unit) * unit).max(unit)
        })
        .collect();
    let want = if threads > 1 {
        threads * WAVE_JOBS_PER_THREAD
    } else {
        1
    };
    loop {
        let jobs: usize = rows.iter().zip(&per).map(|(&r, &p)| r.div_ceil(p)).sum();
        let costliest = (0..per.len())
            .filter(|&i| per[i] > unit)
            .max_by_key(|&i| per[i] * row_cost[i]);
        match costliest {
            Some(i) if jobs < want => per[i] = (per[i] / 2).div_ceil(unit) * unit,
            _ => return per,
        }
    }
}

/// Activation elements below which a wave prepares (quantizes) its inputs on the calling
/// thread: a decode step's few short rows take a microsecond or two, less than waking a pool
/// thread costs.
pub const PREPARE_PARALLEL_MIN_ELEMS: usize = 1 << 16;

/// The threads a job list of `work` units uses: one below `min` (a fork/join costs more than
/// the work; the bits do not depend on it), else `threads`.
fn threads_for(work: usize, min: usize, threads: usize) -> usize {
    if work < min {
        1
    } else {
        threads
    }
}

/// Routes per wave: the scratch of a wave (gathered inputs, intermediate and outputs per
/// route) is bounded by this many rows, whatever the prompt length.
pub const MOE_WAVE_ROUTES_MAX: usize = 1024;

/// One FFN's share of a wave: its tokens `(row, weight)`, matrices, and how its output
/// reaches `out`.
struct Expert<'a> {
    toks: &'a [(usize, f32)],
    gate: QMatrix<'a>,
    up: QMatrix<'a>,
    down: QMatrix<'a>,
    combine: Combine,
}

/// Adds `weight · Expert_e(h[token])` into `out[token]` for every route (see the module
/// docs); `h` and `out` are `[t, D]`. With `shared`, `out` (zero on entry) first takes the
/// shared expert's output, computed in the first wave beside the routed experts: the bits of
/// [`dense_ffn`] then the routes.
pub(crate) fn apply_routes_cpu(
    model: &Model,
    layer: usize,
    h: &[f32],
    shared: Option<&DenseFfn>,
    routes: &[Route],
    out: &mut [f32],
) -> Result<(), ModelError> {
    let moe = model
        .layers
        .get(layer)
        .and_then(|l| l.moe.as_ref())
        .ok_or_else(|| ModelError::InvalidInput(format!("layer {layer} is not a MoE layer")))?;
    let d = model.cfg.n_embd;
    let n_experts = model.cfg.n_experts;
    let n_tokens = h.len() / d;
    if out.len() != h.len() {
        return Err(ModelError::InvalidInput(format!(
            "routed output has {} values, input {}",
            out.len(),
            h.len()
        )));
    }
    let mut by_expert: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n_experts];
    for r in routes {
        let (t, e) = (r.token as usize, r.expert as usize);
        if e >= n_experts || t >= n_tokens {
            return Err(ModelError::InvalidInput(format!(
                "route (token {t}, expert {e}) out of range ({n_tokens} tokens, {n_experts} experts in layer {layer})"
            )));
        }
        by_expert[e].push((t, r.weight));
    }
    let all_tokens: Vec<(usize, f32)> = match shared {
        Some(_) => (0..n_tokens).map(|t| (t, 1.0)).collect(),
        None => Vec::new(),
    };
    let mut wave: Vec<Expert<'_>> = Vec::new();
    let mut wave_routes = 0;
    if let Some(ffn) = shared {
        wave.push(Expert {
            toks: &all_tokens,
            gate: model.mat(&ffn.gate)?,
            up: model.mat(&ffn.up)?,
            down: model.mat(&ffn.down)?,
            combine: Combine::Store,
        });
        wave_routes += n_tokens;
    }
    for (e, toks) in by_expert.iter().enumerate() {
        if wave_routes >= MOE_WAVE_ROUTES_MAX {
            run_wave(&wave, h, d, out)?;
            wave.clear();
            wave_routes = 0;
        }
        if toks.is_empty() {
            continue;
        }
        wave.push(Expert {
            toks,
            gate: model.expert_mat(&moe.gate_exps, e)?,
            up: model.expert_mat(&moe.up_exps, e)?,
            down: model.expert_mat(&moe.down_exps, e)?,
            combine: Combine::Add,
        });
        wave_routes += toks.len();
    }
    run_wave(&wave, h, d, out)
}

/// `out = FFN(x)` for `n` rows of `x` (`[n, D]`): a leading dense layer's FFN or a shared
/// expert, as one FFN of the region (the same bits as three plain matmuls).
pub fn dense_ffn(
    model: &Model,
    ffn: &DenseFfn,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> Result<(), ModelError> {
    let d = model.cfg.n_embd;
    if x.len() != n * d || out.len() != n * d {
        return Err(ModelError::InvalidInput(format!(
            "dense FFN on {n} rows of {d}: input has {} values, output {}",
            x.len(),
            out.len()
        )));
    }
    let toks: Vec<(usize, f32)> = (0..n).map(|t| (t, 1.0)).collect();
    let ffn = Expert {
        toks: &toks,
        gate: model.mat(&ffn.gate)?,
        up: model.mat(&ffn.up)?,
        down: model.mat(&ffn.down)?,
        combine: Combine::Store,
    };
    run_wave(&[ffn], x, d, out)
}

/// How an FFN's outputs reach `out`, in wave order (a `Store` comes first).
#[derive(Clone, Copy, PartialEq)]
enum Combine {
    /// `out[t] += w · y` (routed experts, ascending).
    Add,
    /// `out[t] = y`, the weight ignored (a dense FFN, or the shared expert).
    Store,
}

/// Computes the FFNs of one wave and combines their outputs into `out`.
fn run_wave(wave: &[Expert<'_>], h: &[f32], d: usize, out: &mut [f32]) -> Result<(), ModelError> {
    if wave.is_empty() {
        return Ok(());
    }
    let threads = num_threads();
    let xs: Vec<Vec<f32>> = wave
        .iter()
        .map(|ex| {
            let mut x = Vec::with_capacity(ex.toks.len() * d);
            for &(t, _) in ex.toks {
                x.extend_from_slice(&h[t * d..(t + 1) * d]);
            }
            x
        })
        .collect();

    // Gate and up: one prepared input per expert (two where their types quantize
    // differently), then every row block of every expert.
    let elems: usize = wave.iter().map(|ex| ex.toks.len() * ex.gate.cols()).sum();
    let acts = prepare_all(
        wave.iter().zip(&xs).map(|(ex, x)| (ex, x.as_slice(), true)),
        threads_for(elems, PREPARE_PARALLEL_MIN_ELEMS, threads),
    )?;
    let mut mids: Vec<Vec<f32>> = wave
        .iter()
        .map(|ex| vec![0f32; ex.toks.len() * ex.gate.rows()])
        .collect();
    let macs: usize = wave
        .iter()
        .map(|ex| 2 * ex.toks.len() * ex.gate.rows() * ex.gate.cols())
        .sum();
    let gate_up_threads = threads_for(macs, MATMUL_PARALLEL_MIN_MACS, threads);
    let per_gate = job_rows(wave, |ex| &ex.gate, |ex| 2 * ex.toks.len(), gate_up_threads);
    let mut jobs = Vec::new();
    for (((ex, (ga, ua)), mid), per) in wave.iter().zip(&acts).zip(&mut mids).zip(per_gate) {
        let ua = ua.as_ref().unwrap_or(ga);
        for (rows, outs) in row_blocks(mid, ex.gate.rows(), per) {
            jobs.push((ex, ga, ua, rows, outs));
        }
    }
    let failed = Mutex::new(None);
    run_jobs(jobs, gate_up_threads, |(ex, ga, ua, rows, mut outs)| {
        let res = gate_up(ex, ga, ua, rows, &mut outs);
        keep_first_error(&failed, res);
    });
    take_error(failed)?;
    drop(acts);

    // Down: the SwiGLU outputs prepared per expert, then every row block.
    let elems: usize = wave.iter().map(|ex| ex.toks.len() * ex.down.cols()).sum();
    let acts = prepare_all(
        wave.iter()
            .zip(&mids)
            .map(|(ex, m)| (ex, m.as_slice(), false)),
        threads_for(elems, PREPARE_PARALLEL_MIN_ELEMS, threads),
    )?;
    let mut ys: Vec<Vec<f32>> = wave
        .iter()
        .map(|ex| vec![0f32; ex.toks.len() * d])
        .collect();
    let macs: usize = wave
        .iter()
        .map(|ex| ex.toks.len() * ex.down.rows() * ex.down.cols())
        .sum();
    let down_threads = threads_for(macs, MATMUL_PARALLEL_MIN_MACS, threads);
    let per_down = job_rows(wave, |ex| &ex.down, |ex| ex.toks.len(), down_threads);
    let mut jobs = Vec::new();
    for (((ex, (da, _)), y), per) in wave.iter().zip(&acts).zip(&mut ys).zip(per_down) {
        for (rows, outs) in row_blocks(y, ex.down.rows(), per) {
            jobs.push((ex, da, rows, outs));
        }
    }
    let failed = Mutex::new(None);
    run_jobs(jobs, down_threads, |(ex, da, rows, mut outs)| {
        keep_first_error(
            &failed,
            ex.down.matmul_rows(da, rows, &mut outs).map_err(Into::into),
        );
    });
    take_error(failed)?;

    // The stored FFN first, then the weighted sum, experts ascending within every token.
    for (ex, y) in wave.iter().zip(&ys) {
        for (&(t, w), yr) in ex.toks.iter().zip(y.chunks_exact(d)) {
            let o = &mut out[t * d..(t + 1) * d];
            if ex.combine == Combine::Store {
                o.copy_from_slice(yr);
                continue;
            }
            for (o, &v) in o.iter_mut().zip(yr) {
                *o += w * v;
            }
        }
    }
    Ok(())
}

/// Prepared inputs of each expert: for gate (and up, where it needs another form) when
/// `gate_up`, else for down; prepared in parallel, one job per expert.
type Prepared<'x> = (PreparedActs<'x>, Option<PreparedActs<'x>>);

fn prepare_all<'a, 'x>(
    inputs: impl Iterator<Item = (&'a Expert<'a>, &'x [f32], bool)>,
    threads: usize,
) -> Result<Vec<Prepared<'x>>, ModelError>
where
    'a: 'x,
{
    let inputs: Vec<_> = inputs.collect();
    let mut slots: Vec<Option<Result<Prepared<'x>, ModelError>>> =
        (0..inputs.len()).map(|_| None).collect();
    let jobs: Vec<_> = inputs.into_iter().zip(slots.iter_mut()).collect();
    run_jobs(jobs, threads, |((ex, x, gate_up), slot)| {
        *slot = Some(prepare_one(ex, x, gate_up));
    });
    slots
        .into_iter()
        .map(|s| {
            s.unwrap_or_else(|| Err(ModelError::InvalidInput("expert input not prepared".into())))
        })
        .collect()
}

/// [`prepare_all`]'s job: one expert's input.
fn prepare_one<'x>(
    ex: &Expert<'_>,
    x: &'x [f32],
    gate_up: bool,
) -> Result<Prepared<'x>, ModelError> {
    let n = ex.toks.len();
    if !gate_up {
        return Ok((ex.down.prepare(x, n)?, None));
    }
    let g = ex.gate.prepare(x, n)?;
    let u = if ex.up.accepts(&g) {
        None
    } else {
        Some(ex.up.prepare(x, n)?)
    };
    Ok((g, u))
}

/// Rows `rows` of gate and up for every token of the expert, SwiGLU into `outs[t]`.
fn gate_up(
    ex: &Expert<'_>,
    ga: &PreparedActs<'_>,
    ua: &PreparedActs<'_>,
    rows: Range<usize>,
    outs: &mut [&mut [f32]],
) -> Result<(), ModelError> {
    let (n, r) = (ex.toks.len(), rows.len());
    let mut u = vec![0f32; n * r];
    {
        let mut u_outs: Vec<&mut [f32]> = u.chunks_exact_mut(r).collect();
        ex.up.matmul_rows(ua, rows.clone(), &mut u_outs)?;
    }
    ex.gate.matmul_rows(ga, rows, outs)?;
    for (g, u) in outs.iter_mut().zip(u.chunks_exact(r)) {
        swiglu_inplace(g, u);
    }
    Ok(())
}

/// Cuts `buf` (`[n, rows]`, token-major) into blocks of `per` rows: for each block its row
/// range and, per token, the slice of its outputs.
fn row_blocks(buf: &mut [f32], rows: usize, per: usize) -> Vec<(Range<usize>, Vec<&mut [f32]>)> {
    let n_blocks = rows.div_ceil(per);
    let mut blocks: Vec<(Range<usize>, Vec<&mut [f32]>)> = (0..n_blocks)
        .map(|k| {
            let r0 = k * per;
            (r0..(r0 + per).min(rows), Vec::new())
        })
        .collect();
    for tok in buf.chunks_exact_mut(rows) {
        for (k, part) in tok.chunks_mut(per).enumerate() {
            blocks[k].1.push(part);
        }
    }
    blocks
}

/// Records `res`'s error unless one is recorded already.
pub(super) fn keep_first_error(slot: &Mutex<Option<ModelError>>, res: Result<(), ModelError>) {
    if let Err(e) = res {
        let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
        s.get_or_insert(e);
    }
}

/// The recorded error, if any.
pub(super) fn take_error(slot: Mutex<Option<ModelError>>) -> Result<(), ModelError> {
    match slot.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use moe_kernels::NumericMode;

    use super::*;

    /// The k-quant fixture (a leading dense layer, MoE layers with a shared expert) in `mode`.
    fn kq_model(mode: NumericMode) -> Model {
        let path = moe_devdata::fixtures::fixtures_dir()
            .join("kimi-k25-kq")
            .join("kimi-k25-kq-Q4_K_M.gguf");
        Model::open(&path).unwrap().with_mode(mode)
    }

    /// The shared expert computed in the routed experts' region gives the bits of computing
    /// it alone first (`dense_ffn`, then the routes), both modes, one and three threads, with
    /// enough tokens that the routes take two waves.
    #[test]
    fn shared_expert_in_the_region_keeps_the_bits() {
        for mode in [NumericMode::Exact, NumericMode::Fast] {
            let model = kq_model(mode);
            let d = model.cfg.n_embd;
            let n = MOE_WAVE_ROUTES_MAX / model.cfg.n_experts_used + 20;
            let x: Vec<f32> = (0..n * d)
                .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 700.0)
                .collect();
            let (l, moe) = model
                .layers
                .iter()
                .enumerate()
                .find_map(|(l, lw)| lw.moe.as_ref().map(|m| (l, m)))
                .expect("a MoE layer");
            let shared = moe.shared.as_ref().expect("a shared expert");
            // k distinct experts per token, ascending, spread over all of them.
            let (e, k) = (model.cfg.n_experts, model.cfg.n_experts_used);
            let routes: Vec<Route> = (0..n)
                .flat_map(|t| {
                    let mut ids: Vec<u32> = (0..k).map(|j| ((t * 7 + j * 13) % e) as u32).collect();
                    ids.sort_unstable();
                    ids.dedup();
                    ids.into_iter().enumerate().map(move |(j, expert)| Route {
                        token: t as u32,
                        expert,
                        weight: 0.1 + j as f32 * 0.05,
                    })
                })
                .collect();
            let mut want = vec![0f32; n * d];
            dense_ffn(&model, shared, &x, n, &mut want).unwrap();
            apply_routes_cpu(&model, l, &x, None, &routes, &mut want).unwrap();
            for threads in [1, 3] {
                moe_kernels::set_num_threads(threads);
                let mut got = vec![0f32; n * d];
                apply_routes_cpu(&model, l, &x, Some(shared), &routes, &mut got).unwrap();
                let same = want
                    .iter()
                    .zip(&got)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{mode:?} threads {threads}");
            }
            moe_kernels::set_num_threads(0);
        }
    }

    /// A dense FFN through the region (the leading dense layer and a shared expert of the
    /// k-quant fixture, both modes, one and three threads) gives the bits of three plain
    /// matmuls and the SwiGLU between them.
    #[test]
    fn dense_ffn_equals_three_matmuls() {
        for mode in [NumericMode::Exact, NumericMode::Fast] {
            let model = kq_model(mode);
            let d = model.cfg.n_embd;
            let n = 37;
            let x: Vec<f32> = (0..n * d)
                .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 500.0)
                .collect();
            let ffns: Vec<&DenseFfn> = model
                .layers
                .iter()
                .flat_map(|l| {
                    l.dense
                        .iter()
                        .chain(l.moe.iter().filter_map(|m| m.shared.as_ref()))
                })
                .collect();
            assert!(ffns.len() >= 2, "a dense layer and a shared expert");
            for ffn in ffns {
                let (gate, up, down) = (
                    model.mat(&ffn.gate).unwrap(),
                    model.mat(&ffn.up).unwrap(),
                    model.mat(&ffn.down).unwrap(),
                );
                let f = gate.rows();
                let (mut g, mut u, mut want) =
                    (vec![0f32; n * f], vec![0f32; n * f], vec![0f32; n * d]);
                gate.matmul_with_threads(&x, n, &mut g, 1).unwrap();
                up.matmul_with_threads(&x, n, &mut u, 1).unwrap();
                swiglu_inplace(&mut g, &u);
                down.matmul_with_threads(&g, n, &mut want, 1).unwrap();
                for threads in [1, 3] {
                    moe_kernels::set_num_threads(threads);
                    let mut got = vec![f32::NAN; n * d];
                    dense_ffn(&model, ffn, &x, n, &mut got).unwrap();
                    let same = want
                        .iter()
                        .zip(&got)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{mode:?} threads {threads}");
                }
                moe_kernels::set_num_threads(0);
            }
        }
    }
}
