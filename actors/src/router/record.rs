//! `--record-routing FILE`: wraps any expert backend so that every MoE layer's routing is
//! appended to a routing trace (format in `moe_planner::trace`) before the
//! experts run. Recording never fails a generation: a write error is reported once on
//! stderr and recording stops.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use anyhow::Context;
use moe_model::forward::{ExpertBackend, Routing};
use moe_model::model::{DenseFfn, Model};
use moe_model::ModelError;
use moe_planner::trace::{TraceHeader, TraceWriter};

/// An expert backend that records routings into a trace file, then delegates.
pub struct RecordingExperts {
    inner: Box<dyn ExpertBackend>,
    writer: Option<TraceWriter<BufWriter<File>>>,
    path: PathBuf,
}

impl RecordingExperts {
    /// Creates (truncates) `path` and writes the trace header for `model`.
    pub fn new(inner: Box<dyn ExpertBackend>, model: &Model, path: &Path) -> anyhow::Result<Self> {
        let file = File::create(path)
            .with_context(|| format!("creating routing trace {}", path.display()))?;
        let writer = TraceWriter::new(
            BufWriter::new(file),
            TraceHeader::of_model(model),
            &path.display().to_string(),
        )?;
        Ok(Self {
            inner,
            writer: Some(writer),
            path: path.to_path_buf(),
        })
    }
}

/// `backend`, recording into `record` when given.
pub fn with_recording(
    backend: Box<dyn ExpertBackend>,
    model: &Model,
    record: Option<&Path>,
) -> anyhow::Result<Box<dyn ExpertBackend>> {
    Ok(match record {
        None => backend,
        Some(path) => Box::new(RecordingExperts::new(backend, model, path)?),
    })
}

impl ExpertBackend for RecordingExperts {
    fn begin(
        &mut self,
        model: &Model,
        layer: usize,
        h: &[f32],
        routing: &Routing,
    ) -> Result<(), ModelError> {
        if let Some(writer) = &mut self.writer {
            if let Err(e) = writer.record(layer, routing) {
                eprintln!(
                    "warning: routing trace {}: {e}; recording stopped",
                    self.path.display()
                );
                self.writer = None;
            }
        }
        self.inner.begin(model, layer, h, routing)
    }

    fn finish(&mut self, model: &Model, layer: usize, out: &mut [f32]) -> Result<(), ModelError> {
        self.inner.finish(model, layer, out)
    }

    fn finish_with_shared(
        &mut self,
        model: &Model,
        layer: usize,
        shared: Option<&DenseFfn>,
        h: &[f32],
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        self.inner.finish_with_shared(model, layer, shared, h, out)
    }
}

impl Drop for RecordingExperts {
    fn drop(&mut self) {
        if let Some(writer) = self.writer.take() {
            match writer.finish() {
                Ok(_) => eprintln!("recorded routing trace {}", self.path.display()),
                Err(e) => eprintln!("warning: routing trace {}: {e}", self.path.display()),
            }
        }
    }
}
