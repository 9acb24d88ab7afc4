//! The routed experts of one MoE layer on the CPU as one parallel region: tokens grouped per
//! expert, each expert's activations prepared once (quantized once in Fast mode, shared by
//! gate and up), then every (expert × row block) of gate + up + SwiGLU as one job list on
//! the pool, then every (expert × row block) of the down projection, then the weighted sum.
//! One fork/join per phase instead of one per matrix: a decode step of Kimi K2.5 runs 24
//! small matrices per layer, each too short to split well on its own.
//!
//! Decides: the job shapes ([`EXPERT_ROWS_PER_JOB`]) and the scratch bound (experts are
//! taken in waves of at most [`MOE_WAVE_ROUTES_MAX`] routes). Leaves the arithmetic to the
//! kernels: a row's result depends only on the row and the token, so the bits equal those
//! of computing each expert alone, and the weighted sum adds experts into a token in
//! ascending expert order (the order [`super::ExpertCompute`]'s contract fixes).

use std::ops::Range;
use std::sync::Mutex;

use moe_kernels::{num_threads, run_jobs, PreparedActs, QMatrix};

use super::moe::Route;
use super::ops::swiglu_inplace;
use crate::model::Model;
use crate::ModelError;

/// Weight rows per job: a multiple of the kernels' 4-row tile; 32 rows of a 7168-wide
/// matrix are 230 k multiply-adds per token (a few microseconds), enough to pay for taking a
/// job and few enough that a decode step's 8 experts split over 16 threads.
pub const EXPERT_ROWS_PER_JOB: usize = 32;

/// Routes per wave: the scratch of a wave (gathered inputs, intermediate and outputs per
/// route) is bounded by this many rows, whatever the prompt length.
pub const MOE_WAVE_ROUTES_MAX: usize = 1024;

/// One expert's share of a wave: its tokens `(row, weight)` and matrices.
struct Expert<'a> {
    toks: &'a [(usize, f32)],
    gate: QMatrix<'a>,
    up: QMatrix<'a>,
    down: QMatrix<'a>,
}

/// Adds `weight · Expert_e(h[token])` into `out[token]` for every route (see the module
/// docs); `h` and `out` are `[t, D]`.
pub(crate) fn apply_routes_cpu(
    model: &Model,
    layer: usize,
    h: &[f32],
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
    let mut wave: Vec<Expert<'_>> = Vec::new();
    let mut wave_routes = 0;
    for (e, toks) in by_expert.iter().enumerate() {
        if toks.is_empty() {
            continue;
        }
        wave.push(Expert {
            toks,
            gate: model.expert_mat(&moe.gate_exps, e)?,
            up: model.expert_mat(&moe.up_exps, e)?,
            down: model.expert_mat(&moe.down_exps, e)?,
        });
        wave_routes += toks.len();
        if wave_routes >= MOE_WAVE_ROUTES_MAX {
            run_wave(&wave, h, d, out)?;
            wave.clear();
            wave_routes = 0;
        }
    }
    run_wave(&wave, h, d, out)
}

/// Computes the experts of one wave and adds their weighted outputs into `out`.
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
    let acts = prepare_all(
        wave.iter().zip(&xs).map(|(ex, x)| (ex, x.as_slice(), true)),
        threads,
    )?;
    let mut mids: Vec<Vec<f32>> = wave
        .iter()
        .map(|ex| vec![0f32; ex.toks.len() * ex.gate.rows()])
        .collect();
    let mut jobs = Vec::new();
    for ((ex, (ga, ua)), mid) in wave.iter().zip(&acts).zip(&mut mids) {
        let ua = ua.as_ref().unwrap_or(ga);
        for (rows, outs) in row_blocks(mid, ex.gate.rows()) {
            jobs.push((ex, ga, ua, rows, outs));
        }
    }
    let failed = Mutex::new(None);
    run_jobs(jobs, threads, |(ex, ga, ua, rows, mut outs)| {
        let res = gate_up(ex, ga, ua, rows, &mut outs);
        keep_first_error(&failed, res);
    });
    take_error(failed)?;
    drop(acts);

    // Down: the SwiGLU outputs prepared per expert, then every row block.
    let acts = prepare_all(
        wave.iter()
            .zip(&mids)
            .map(|(ex, m)| (ex, m.as_slice(), false)),
        threads,
    )?;
    let mut ys: Vec<Vec<f32>> = wave
        .iter()
        .map(|ex| vec![0f32; ex.toks.len() * d])
        .collect();
    let mut jobs = Vec::new();
    for ((ex, (da, _)), y) in wave.iter().zip(&acts).zip(&mut ys) {
        for (rows, outs) in row_blocks(y, d) {
            jobs.push((ex, da, rows, outs));
        }
    }
    let failed = Mutex::new(None);
    run_jobs(jobs, threads, |(ex, da, rows, mut outs)| {
        keep_first_error(
            &failed,
            ex.down.matmul_rows(da, rows, &mut outs).map_err(Into::into),
        );
    });
    take_error(failed)?;

    // The weighted sum, experts ascending within every token.
    for (ex, y) in wave.iter().zip(&ys) {
        for (&(t, w), yr) in ex.toks.iter().zip(y.chunks_exact(d)) {
            for (o, &v) in out[t * d..(t + 1) * d].iter_mut().zip(yr) {
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

/// Cuts `buf` (`[n, rows]`, token-major) into blocks of [`EXPERT_ROWS_PER_JOB`] rows: for
/// each block its row range and, per token, the slice of its outputs.
fn row_blocks(buf: &mut [f32], rows: usize) -> Vec<(Range<usize>, Vec<&mut [f32]>)> {
    let n_blocks = rows.div_ceil(EXPERT_ROWS_PER_JOB);
    let mut blocks: Vec<(Range<usize>, Vec<&mut [f32]>)> = (0..n_blocks)
        .map(|k| {
            let r0 = k * EXPERT_ROWS_PER_JOB;
            (r0..(r0 + EXPERT_ROWS_PER_JOB).min(rows), Vec::new())
        })
        .collect();
    for tok in buf.chunks_exact_mut(rows) {
        for (k, part) in tok.chunks_mut(EXPERT_ROWS_PER_JOB).enumerate() {
            blocks[k].1.push(part);
        }
    }
    blocks
}

/// Records `res`'s error unless one is recorded already.
fn keep_first_error(slot: &Mutex<Option<ModelError>>, res: Result<(), ModelError>) {
    if let Err(e) = res {
        let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
        s.get_or_insert(e);
    }
}

/// The recorded error, if any.
fn take_error(slot: Mutex<Option<ModelError>>) -> Result<(), ModelError> {
    match slot.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
