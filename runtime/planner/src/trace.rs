//! Routing traces: which experts every token chose in every MoE layer of every step, as a
//! line-oriented text file that the planner and the simulator read.
//!
//! This module decides the file format, writes it (a [`TraceWriter`] is a forward
//! [`Observer`]; the commands' `--record-routing` wraps their expert backend in the actors
//! crate's `cli/record.rs`, which feeds every layer's routing to one) and reads it back with
//! limits ([`read_trace`]). What the routes mean for load is left to [`crate::plan`] and
//! [`crate::simulate`].
//!
//! # Format (version 1)
//!
//! UTF-8 text, one record per line, fields separated by single spaces; blank lines and lines
//! starting with `#` are ignored. The first record is the header:
//!
//! ```text
//! moe-trace 1 n_experts=384 k=8 hidden=7168 expert_bytes=44040192 moe_layers=1,2,3
//! ```
//!
//! `n_experts` routed experts per MoE layer, `k` experts per token, `hidden` the hidden size
//! (for bytes on the wire), `expert_bytes` one expert's three matrices in one layer as stored
//! (for memory limits; 0 = unknown), `moe_layers` the model layer indices of the MoE layers,
//! ascending. Then, in any number:
//!
//! ```text
//! r <step> <layer> <tokens> <expert ids: tokens × k, token-major>
//! c <layer> <count of expert 0> ... <count of expert n_experts-1>
//! ```
//!
//! An `r` (route) record is one MoE layer of one step (one forward call over a batch): the
//! `k` chosen experts of each of its `tokens` tokens, distinct within a token. Steps count
//! from 0 and never decrease; within a step, layers strictly increase. A `c` (counts) record
//! holds the *cumulative* number of times each expert of `layer` was chosen by the `r`
//! records before it: the writer adds one for every MoE layer every [`COUNTS_EVERY_STEPS`]
//! steps and at the end, so a long trace carries rolling per-layer per-expert counts that a
//! person can read without replaying it. The reader checks them against the routes.
//!
//! Example (2 experts per token, 8 experts, MoE layers 1 and 2, one 2-token step):
//!
//! ```text
//! moe-trace 1 n_experts=8 k=2 hidden=64 expert_bytes=0 moe_layers=1,2
//! r 0 1 2 0 3 0 5
//! r 0 2 2 1 2 6 7
//! c 1 2 0 0 1 0 1 0 0
//! c 2 0 1 1 0 0 0 1 1
//! ```

use std::io::{BufRead, Read, Write};

use crate::PlanError;
use moe_cluster::placement::MOE_LAYERS_MAX;
use moe_model::forward::{Observer, Routing};
use moe_model::model::Model;
use moe_model::EXPERTS_PER_LAYER_MAX;

/// The format version this module writes and reads.
pub const TRACE_VERSION: u32 = 1;
/// The longest line accepted, in bytes.
pub const TRACE_LINE_BYTES_MAX: usize = 8 << 20;
/// Most (layer, expert) counters a trace header may ask for (Kimi K2.5: 60 x 384 = 23040).
pub const TRACE_COUNTERS_MAX: usize = 1 << 20;
/// The most tokens one route record may hold.
pub const TRACE_RECORD_TOKENS_MAX: usize = 1 << 16;
/// The most (token, expert) routes a whole trace may hold (4 bytes each in memory).
pub const TRACE_ROUTES_MAX: usize = 1 << 27;
/// The most experts per token a trace may declare.
pub const TRACE_K_MAX: usize = 64;
/// The largest hidden size a trace may declare.
pub const TRACE_HIDDEN_MAX: usize = 1 << 20;
/// The writer adds cumulative counts records after every this many complete steps.
pub const COUNTS_EVERY_STEPS: u64 = 64;

/// The model facts a trace needs, from its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeader {
    /// Routed experts per MoE layer.
    pub n_experts: usize,
    /// Experts chosen per token.
    pub k: usize,
    /// Hidden size (elements per token row sent to an expert node).
    pub hidden: usize,
    /// Bytes of one expert (gate + up + down) in one layer as stored; 0 = unknown.
    pub expert_bytes: u64,
    /// Model layer indices of the MoE layers, ascending.
    pub moe_layers: Vec<usize>,
}

impl TraceHeader {
    /// The header for a loaded model (per-expert bytes from its first MoE layer).
    pub fn of_model(model: &Model) -> Self {
        let c = &model.cfg;
        let expert_bytes = model
            .layers
            .iter()
            .find_map(|l| l.moe.as_ref())
            .map(|m| {
                (m.gate_exps.expert_bytes() + m.up_exps.expert_bytes() + m.down_exps.expert_bytes())
                    as u64
            })
            .unwrap_or(0);
        Self {
            n_experts: c.n_experts,
            k: c.n_experts_used,
            hidden: c.n_embd,
            expert_bytes,
            moe_layers: c.moe_layers(),
        }
    }

    /// The position of model layer `layer` among the MoE layers.
    pub fn slot(&self, layer: usize) -> Option<usize> {
        self.moe_layers.binary_search(&layer).ok()
    }

    fn check(&self) -> Result<(), String> {
        if self.n_experts == 0 || self.n_experts > EXPERTS_PER_LAYER_MAX {
            return Err(format!(
                "n_experts = {} must be 1 to EXPERTS_PER_LAYER_MAX = {EXPERTS_PER_LAYER_MAX}",
                self.n_experts
            ));
        }
        if self.k == 0 || self.k > TRACE_K_MAX || self.k > self.n_experts {
            return Err(format!(
                "k = {} must be 1 to min(n_experts, TRACE_K_MAX = {TRACE_K_MAX})",
                self.k
            ));
        }
        if self.hidden == 0 || self.hidden > TRACE_HIDDEN_MAX {
            return Err(format!(
                "hidden = {} must be 1 to TRACE_HIDDEN_MAX = {TRACE_HIDDEN_MAX}",
                self.hidden
            ));
        }
        if self.moe_layers.is_empty() || self.moe_layers.len() > MOE_LAYERS_MAX {
            return Err(format!(
                "moe_layers must list 1 to MOE_LAYERS_MAX = {MOE_LAYERS_MAX} layers"
            ));
        }
        if self.moe_layers.len().saturating_mul(self.n_experts) > TRACE_COUNTERS_MAX {
            return Err(format!(
                "{} MoE layers x {} experts exceed TRACE_COUNTERS_MAX = {TRACE_COUNTERS_MAX} counters",
                self.moe_layers.len(),
                self.n_experts
            ));
        }
        if self.moe_layers.windows(2).any(|w| w[0] >= w[1])
            || self.moe_layers.last().is_some_and(|&l| l >= MOE_LAYERS_MAX)
        {
            return Err(format!(
                "moe_layers must ascend strictly and stay below MOE_LAYERS_MAX = {MOE_LAYERS_MAX}"
            ));
        }
        Ok(())
    }

    fn to_line(&self) -> String {
        let layers: Vec<String> = self.moe_layers.iter().map(|l| l.to_string()).collect();
        format!(
            "moe-trace {TRACE_VERSION} n_experts={} k={} hidden={} expert_bytes={} moe_layers={}",
            self.n_experts,
            self.k,
            self.hidden,
            self.expert_bytes,
            layers.join(",")
        )
    }
}

/// One MoE layer of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceRecord {
    /// The step (forward call) it belongs to.
    pub step: u64,
    /// Model layer index.
    pub layer: usize,
    /// `[tokens × k]` expert ids, token-major.
    pub experts: Vec<u32>,
}

/// A whole trace in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// The model facts.
    pub header: TraceHeader,
    /// Route records in file order.
    pub records: Vec<TraceRecord>,
}

impl Trace {
    /// Tokens of a record.
    pub fn tokens_of(&self, record: &TraceRecord) -> usize {
        record.experts.len() / self.header.k
    }

    /// Per MoE layer (in `header.moe_layers` order), how often each expert was chosen.
    pub fn expert_counts(&self) -> Vec<Vec<u64>> {
        let h = &self.header;
        let mut counts = vec![vec![0u64; h.n_experts]; h.moe_layers.len()];
        for r in &self.records {
            if let Some(slot) = h.slot(r.layer) {
                for &e in &r.experts {
                    counts[slot][e as usize] += 1;
                }
            }
        }
        counts
    }

    /// The records grouped by step, in order.
    pub fn steps(&self) -> impl Iterator<Item = &[TraceRecord]> + '_ {
        self.records.chunk_by(|a, b| a.step == b.step)
    }

    /// Tokens over all steps (a step's tokens are those of its first record).
    pub fn n_tokens(&self) -> u64 {
        self.steps()
            .filter_map(|s| s.first())
            .map(|r| self.tokens_of(r) as u64)
            .sum()
    }

    /// A record as the forward pass's [`Routing`] (weights 1, which the planners ignore).
    pub fn routing_of(&self, record: &TraceRecord) -> Routing {
        Routing {
            k: self.header.k,
            experts: record.experts.clone(),
            weights: vec![1.0; record.experts.len()],
        }
    }
}

/// Writes a trace record by record; also an [`Observer`] (the first error is kept and
/// returned by [`TraceWriter::finish`], since observers cannot fail).
#[derive(Debug)]
pub struct TraceWriter<W: Write> {
    out: W,
    header: TraceHeader,
    /// The step of the next record, and the last layer written in it.
    step: u64,
    last_layer: Option<usize>,
    counts: Vec<Vec<u64>>,
    steps_done: u64,
    records_since_counts: bool,
    error: Option<PlanError>,
    what: String,
}

impl<W: Write> TraceWriter<W> {
    /// Starts a trace by writing its header; `what` names the destination in errors.
    pub fn new(mut out: W, header: TraceHeader, what: &str) -> Result<Self, PlanError> {
        header
            .check()
            .map_err(|message| PlanError::TraceFormat { line: 1, message })?;
        writeln!(out, "{}", header.to_line()).map_err(|e| io_error(what, e))?;
        let counts = vec![vec![0u64; header.n_experts]; header.moe_layers.len()];
        Ok(Self {
            out,
            header,
            step: 0,
            last_layer: None,
            counts,
            steps_done: 0,
            records_since_counts: false,
            error: None,
            what: what.to_string(),
        })
    }

    /// Appends the routing of MoE layer `layer`; a layer at or below the previous one
    /// starts a new step. Flushes after the last MoE layer of a step.
    pub fn record(&mut self, layer: usize, routing: &Routing) -> Result<(), PlanError> {
        let h = &self.header;
        let fail = |message: String| PlanError::TraceFormat { line: 0, message };
        let slot = h
            .slot(layer)
            .ok_or_else(|| fail(format!("layer {layer} is not a MoE layer of the trace")))?;
        if routing.k != h.k || !routing.experts.len().is_multiple_of(h.k.max(1)) {
            return Err(fail(format!(
                "routing of layer {layer} has k = {} and {} experts, the trace has k = {}",
                routing.k,
                routing.experts.len(),
                h.k
            )));
        }
        if let Some(&bad) = routing.experts.iter().find(|&&e| e as usize >= h.n_experts) {
            return Err(fail(format!(
                "expert {bad} in layer {layer} is not below n_experts = {}",
                h.n_experts
            )));
        }
        if self.last_layer.is_some_and(|l| layer <= l) {
            self.step += 1;
        }
        self.last_layer = Some(layer);
        let mut line = format!("r {} {layer} {}", self.step, routing.n_tokens());
        for &e in &routing.experts {
            line.push(' ');
            line.push_str(&e.to_string());
            self.counts[slot][e as usize] += 1;
        }
        line.push('\n');
        self.records_since_counts = true;
        let what = self.what.clone();
        self.out
            .write_all(line.as_bytes())
            .map_err(|e| io_error(&what, e))?;
        if Some(&layer) == self.header.moe_layers.last() {
            self.steps_done += 1;
            if self.steps_done.is_multiple_of(COUNTS_EVERY_STEPS) {
                self.write_counts()?;
            }
            self.out.flush().map_err(|e| io_error(&what, e))?;
        }
        Ok(())
    }

    /// Writes the final counts, flushes, and returns the destination (or the first error of
    /// an [`Observer`] call).
    pub fn finish(mut self) -> Result<W, PlanError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if self.records_since_counts {
            self.write_counts()?;
        }
        self.out.flush().map_err(|e| io_error(&self.what, e))?;
        Ok(self.out)
    }

    fn write_counts(&mut self) -> Result<(), PlanError> {
        for (slot, counts) in self.counts.iter().enumerate() {
            let mut line = format!("c {}", self.header.moe_layers[slot]);
            for c in counts {
                line.push(' ');
                line.push_str(&c.to_string());
            }
            line.push('\n');
            self.out
                .write_all(line.as_bytes())
                .map_err(|e| io_error(&self.what, e))?;
        }
        self.records_since_counts = false;
        Ok(())
    }
}

impl<W: Write + Send> Observer for TraceWriter<W> {
    fn routing(&mut self, layer: usize, routing: &Routing) {
        if self.error.is_none() {
            if let Err(e) = self.record(layer, routing) {
                self.error = Some(e);
            }
        }
    }
}

fn io_error(what: &str, source: std::io::Error) -> PlanError {
    PlanError::Io {
        path: what.to_string(),
        source,
    }
}

/// Reads a whole trace, checking every limit, the header, every record against it, and
/// every counts record against the routes before it. `what` names the source in I/O errors.
pub fn read_trace(input: impl Read, what: &str) -> Result<Trace, PlanError> {
    let mut reader = std::io::BufReader::new(input);
    let mut buf = Vec::new();
    let mut line_no = 0usize;
    let mut header: Option<TraceHeader> = None;
    let mut records: Vec<TraceRecord> = Vec::new();
    let mut counts: Vec<Vec<u64>> = Vec::new();
    let mut routes = 0usize;
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(TRACE_LINE_BYTES_MAX as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| io_error(what, e))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let fail = |message: String| PlanError::TraceFormat {
            line: line_no,
            message,
        };
        if buf.last() != Some(&b'\n') {
            return Err(fail(if buf.len() > TRACE_LINE_BYTES_MAX {
                format!("line longer than TRACE_LINE_BYTES_MAX = {TRACE_LINE_BYTES_MAX} bytes")
            } else {
                "the last line has no newline (truncated trace?)".into()
            }));
        }
        let text = std::str::from_utf8(&buf).map_err(|_| fail("not UTF-8".into()))?;
        let text = text.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() || text.starts_with('#') {
            continue;
        }
        let Some(h) = &header else {
            let h = parse_header(text).map_err(fail)?;
            counts = vec![vec![0u64; h.n_experts]; h.moe_layers.len()];
            header = Some(h);
            continue;
        };
        let mut fields = text.split(' ');
        match fields.next() {
            Some("r") => {
                let step = number::<u64>(fields.next(), "step").map_err(fail)?;
                let layer = number::<usize>(fields.next(), "layer").map_err(fail)?;
                let tokens = number::<usize>(fields.next(), "tokens").map_err(fail)?;
                let slot = h
                    .slot(layer)
                    .ok_or_else(|| fail(format!("layer {layer} is not in moe_layers")))?;
                if tokens > TRACE_RECORD_TOKENS_MAX {
                    return Err(fail(format!(
                        "{tokens} tokens exceed TRACE_RECORD_TOKENS_MAX = {TRACE_RECORD_TOKENS_MAX}"
                    )));
                }
                let n = tokens * h.k;
                if routes + n > TRACE_ROUTES_MAX {
                    return Err(fail(format!(
                        "the trace exceeds TRACE_ROUTES_MAX = {TRACE_ROUTES_MAX} routes"
                    )));
                }
                if let Some(prev) = records.last() {
                    if step < prev.step {
                        return Err(fail(format!(
                            "step {step} after step {} (steps never decrease)",
                            prev.step
                        )));
                    }
                    if step == prev.step && layer <= prev.layer {
                        return Err(fail(format!(
                            "layer {layer} after layer {} in step {step} (layers increase within a step)",
                            prev.layer
                        )));
                    }
                }
                let mut experts = Vec::with_capacity(n);
                for field in fields.by_ref() {
                    if experts.len() == n {
                        return Err(fail(format!(
                            "more than tokens × k = {tokens} × {} expert ids",
                            h.k
                        )));
                    }
                    let e = number::<u32>(Some(field), "expert id").map_err(fail)?;
                    if e as usize >= h.n_experts {
                        return Err(fail(format!(
                            "expert {e} is not below n_experts = {}",
                            h.n_experts
                        )));
                    }
                    let token = experts.len() / h.k;
                    if experts[token * h.k..].contains(&e) {
                        return Err(fail(format!("token {token} chooses expert {e} twice")));
                    }
                    experts.push(e);
                }
                if experts.len() != n {
                    return Err(fail(format!(
                        "{} expert ids, expected tokens × k = {tokens} × {} = {n}",
                        experts.len(),
                        h.k
                    )));
                }
                for &e in &experts {
                    counts[slot][e as usize] += 1;
                }
                routes += n;
                records.push(TraceRecord {
                    step,
                    layer,
                    experts,
                });
            }
            Some("c") => {
                let layer = number::<usize>(fields.next(), "layer").map_err(fail)?;
                let slot = h
                    .slot(layer)
                    .ok_or_else(|| fail(format!("layer {layer} is not in moe_layers")))?;
                let mut n = 0usize;
                for (e, field) in fields.enumerate() {
                    let got = number::<u64>(Some(field), "count").map_err(fail)?;
                    let want = counts[slot].get(e).copied().ok_or_else(|| {
                        fail(format!("more than n_experts = {} counts", h.n_experts))
                    })?;
                    if got != want {
                        return Err(fail(format!(
                            "counts record says expert {e} of layer {layer} was chosen {got} times, the routes before it say {want}"
                        )));
                    }
                    n += 1;
                }
                if n != h.n_experts {
                    return Err(fail(format!(
                        "{n} counts, expected n_experts = {}",
                        h.n_experts
                    )));
                }
            }
            Some(other) => {
                return Err(fail(format!(
                    "unknown record {other:?} (expected \"r\" or \"c\")"
                )));
            }
            None => return Err(fail("empty record".into())),
        }
    }
    let header = header.ok_or_else(|| PlanError::TraceFormat {
        line: 0,
        message: "no header: the trace is empty".into(),
    })?;
    Ok(Trace { header, records })
}

/// Reads a trace file.
pub fn read_trace_file(path: &std::path::Path) -> Result<Trace, PlanError> {
    let what = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| io_error(&what, e))?;
    read_trace(file, &what)
}

fn number<T: std::str::FromStr>(field: Option<&str>, name: &str) -> Result<T, String> {
    let field = field.ok_or_else(|| format!("missing {name}"))?;
    field
        .parse()
        .map_err(|_| format!("{name} {field:?} is not a non-negative integer in range"))
}

fn parse_header(text: &str) -> Result<TraceHeader, String> {
    let mut fields = text.split(' ');
    if fields.next() != Some("moe-trace") {
        return Err("the first record must be the header \"moe-trace 1 ...\"".into());
    }
    let version = number::<u32>(fields.next(), "version")?;
    if version != TRACE_VERSION {
        return Err(format!(
            "trace version {version}, this build reads version {TRACE_VERSION}"
        ));
    }
    let (mut n_experts, mut k, mut hidden, mut expert_bytes, mut moe_layers) =
        (None, None, None, None, None);
    for field in fields {
        let (key, value) = field
            .split_once('=')
            .ok_or_else(|| format!("header field {field:?} is not key=value"))?;
        let slot_taken = match key {
            "n_experts" => n_experts
                .replace(number::<usize>(Some(value), key)?)
                .is_some(),
            "k" => k.replace(number::<usize>(Some(value), key)?).is_some(),
            "hidden" => hidden.replace(number::<usize>(Some(value), key)?).is_some(),
            "expert_bytes" => expert_bytes
                .replace(number::<u64>(Some(value), key)?)
                .is_some(),
            "moe_layers" => {
                let layers = value
                    .split(',')
                    .take(MOE_LAYERS_MAX + 1)
                    .map(|l| number::<usize>(Some(l), "moe layer"))
                    .collect::<Result<Vec<_>, _>>()?;
                moe_layers.replace(layers).is_some()
            }
            other => return Err(format!("unknown header field {other:?}")),
        };
        if slot_taken {
            return Err(format!("header field {key} given twice"));
        }
    }
    let missing = |name: &str| format!("header lacks {name}=");
    let header = TraceHeader {
        n_experts: n_experts.ok_or_else(|| missing("n_experts"))?,
        k: k.ok_or_else(|| missing("k"))?,
        hidden: hidden.ok_or_else(|| missing("hidden"))?,
        expert_bytes: expert_bytes.ok_or_else(|| missing("expert_bytes"))?,
        moe_layers: moe_layers.ok_or_else(|| missing("moe_layers"))?,
    };
    header.check()?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn header() -> TraceHeader {
        TraceHeader {
            n_experts: 8,
            k: 2,
            hidden: 64,
            expert_bytes: 0,
            moe_layers: vec![1, 2],
        }
    }

    fn routing(experts: &[u32]) -> Routing {
        Routing {
            k: 2,
            experts: experts.to_vec(),
            weights: vec![0.5; experts.len()],
        }
    }

    #[test]
    fn the_module_doc_example_reads() {
        let text = "moe-trace 1 n_experts=8 k=2 hidden=64 expert_bytes=0 moe_layers=1,2\n\
                    r 0 1 2 0 3 0 5\nr 0 2 2 1 2 6 7\nc 1 2 0 0 1 0 1 0 0\nc 2 0 1 1 0 0 0 1 1\n";
        let t = read_trace(text.as_bytes(), "doc").unwrap();
        assert_eq!(t.records.len(), 2);
        assert_eq!(t.n_tokens(), 2);
        assert_eq!(t.expert_counts()[0], vec![2, 0, 0, 1, 0, 1, 0, 0]);
    }

    #[test]
    fn written_traces_read_back_equal_with_steps_and_counts() {
        let mut w = TraceWriter::new(Vec::new(), header(), "mem").unwrap();
        // Step 0: a 2-token prefill; steps 1.. one token each, via the Observer interface.
        w.record(1, &routing(&[0, 3, 0, 5])).unwrap();
        w.record(2, &routing(&[1, 2, 6, 7])).unwrap();
        for i in 0..(COUNTS_EVERY_STEPS as u32 + 3) {
            Observer::routing(&mut w, 1, &routing(&[i % 8, (i + 1) % 8]));
            Observer::routing(&mut w, 2, &routing(&[(i + 4) % 8, (i + 2) % 8]));
        }
        let bytes = w.finish().unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        // Rolling counts after step COUNTS_EVERY_STEPS and at the end, one per layer each.
        assert_eq!(text.lines().filter(|l| l.starts_with("c ")).count(), 4);
        let t = read_trace(&bytes[..], "mem").unwrap();
        assert_eq!(t.header, header());
        assert_eq!(t.records.len(), 2 * (COUNTS_EVERY_STEPS as usize + 4));
        assert_eq!(
            t.records[0],
            TraceRecord {
                step: 0,
                layer: 1,
                experts: vec![0, 3, 0, 5]
            }
        );
        assert_eq!(t.records[3].step, 1);
        assert_eq!(t.steps().count(), COUNTS_EVERY_STEPS as usize + 4);
        assert_eq!(t.n_tokens(), 2 + COUNTS_EVERY_STEPS + 3);
        let total: u64 = t.expert_counts().iter().flatten().sum();
        assert_eq!(total, 2 * 2 * t.n_tokens());
    }

    #[test]
    fn writer_refuses_routing_the_header_does_not_describe() {
        let mut w = TraceWriter::new(Vec::new(), header(), "mem").unwrap();
        assert!(w
            .record(3, &routing(&[0, 1]))
            .unwrap_err()
            .to_string()
            .contains("layer 3"));
        assert!(w
            .record(1, &routing(&[0, 9]))
            .unwrap_err()
            .to_string()
            .contains("expert 9"));
        Observer::routing(&mut w, 5, &routing(&[0, 1]));
        assert!(w.finish().is_err());
    }

    fn read_err(body: &str) -> String {
        let text =
            format!("moe-trace 1 n_experts=8 k=2 hidden=64 expert_bytes=0 moe_layers=1,2\n{body}");
        read_trace(text.as_bytes(), "t").unwrap_err().to_string()
    }

    #[test]
    fn reader_errors_name_the_line_and_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("r 0 1 1 0\n", "expected tokens × k"),
            ("r 0 1 1 0 1 2\n", "more than tokens × k"),
            ("r 0 3 1 0 1\n", "layer 3 is not in moe_layers"),
            ("r 0 1 1 0 8\n", "expert 8 is not below"),
            ("r 0 1 1 4 4\n", "chooses expert 4 twice"),
            ("r 1 1 1 0 1\nr 0 1 1 0 1\n", "line 3: step 0 after step 1"),
            ("r 0 2 1 0 1\nr 0 1 1 0 1\n", "layers increase"),
            ("r 0 1 1 0 x\n", "\"x\" is not a non-negative integer"),
            (
                "r 0 1 1 0 1\nc 1 2 1 0 0 0 0 0 0\n",
                "chosen 2 times, the routes before it say 1",
            ),
            ("r 0 1 1 0 1\nc 1 1 1\n", "2 counts, expected n_experts = 8"),
            ("x 1\n", "unknown record"),
            ("r 0 1 1 0 1", "no newline"),
            ("r 0 1 99999999 0 1\n", "TRACE_RECORD_TOKENS_MAX"),
        ];
        for (body, needle) in cases {
            let err = read_err(body);
            assert!(err.contains(needle), "{body:?}: {err}");
            assert!(err.contains("routing trace line"), "{err}");
        }
    }

    #[test]
    fn reader_refuses_bad_headers_and_overlong_lines() {
        let bad = [
            ("", "empty"),
            ("r 0 1 1 0 1\n", "first record must be the header"),
            ("moe-trace 2 n_experts=8\n", "version 2"),
            (
                "moe-trace 1 n_experts=8 k=2 hidden=64 moe_layers=1\n",
                "expert_bytes",
            ),
            (
                "moe-trace 1 n_experts=8 k=9 hidden=64 expert_bytes=0 moe_layers=1\n",
                "k = 9",
            ),
            (
                "moe-trace 1 n_experts=8 k=2 hidden=64 expert_bytes=0 moe_layers=2,1\n",
                "ascend",
            ),
            (
                "moe-trace 1 n_experts=8 k=2 hidden=64 expert_bytes=0 moe_layers=1 extra=1\n",
                "unknown header field",
            ),
        ];
        for (text, needle) in bad {
            let err = read_trace(text.as_bytes(), "t").unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        // The largest expert count over every allowed layer: refused before allocating.
        let layers: Vec<String> = (0..MOE_LAYERS_MAX).map(|l| l.to_string()).collect();
        let huge = format!(
            "moe-trace 1 n_experts={EXPERTS_PER_LAYER_MAX} k=2 hidden=64 expert_bytes=0 moe_layers={}\n",
            layers.join(",")
        );
        let err = read_trace(huge.as_bytes(), "t").unwrap_err().to_string();
        assert!(err.contains("TRACE_COUNTERS_MAX"), "{err}");
        let long = format!("# {}\n", "x".repeat(TRACE_LINE_BYTES_MAX));
        let err = read_err(&long);
        assert!(err.contains("TRACE_LINE_BYTES_MAX"), "{err}");
    }
}
