//! Route tiles: the tiled matvec shaders (`kernels/tile_io.glsl`, `kernels/tile_main.glsl`)
//! compute one output row for a tile of routes of one expert per workgroup, so the routes of
//! a tile read the expert's weights from memory once (a prompt's tokens routed to the same
//! expert; on a decode step every tile holds one route). This module builds the metadata
//! buffer they read and records their dispatches; tiles hold 1 or up to [`ROUTE_TILE`]
//! routes, each with its own pipeline (the shaders' specialization constant).

use crate::commands::Commands;
use crate::device::{Buffer, Device};
use crate::kernels::{Kernel, ROUTE_TILE};
use crate::VulkanError;

/// The tiled shaders' metadata, one `u32` array: per matrix and route the byte offset of the
/// route's expert matrix in its weight buffer, per input kind and route the row it reads,
/// then the tile starts (tile `i` is routes `starts[i] .. starts[i + 1]`).
pub(crate) struct TileMeta {
    /// The words, in that order.
    pub words: Vec<u32>,
    routes: usize,
    matrices: usize,
    inputs: usize,
    /// `tiles + 1` entries.
    starts: Vec<u32>,
}

impl TileMeta {
    /// Tiles over routes whose experts are `experts` (sorted, so each expert's routes are
    /// consecutive): a new tile where the expert changes or a tile holds `tile` routes (1 or
    /// [`ROUTE_TILE`]). `offsets` holds `matrices` runs of one offset per route; `inputs` one
    /// run of input rows per input kind.
    pub fn new(experts: &[u32], offsets: &[u32], inputs: &[&[u32]], tile: usize) -> Self {
        debug_assert!(tile == 1 || tile == ROUTE_TILE);
        let routes = experts.len();
        debug_assert!(offsets.len().is_multiple_of(routes.max(1)));
        debug_assert!(experts.is_sorted());
        let mut starts = vec![0u32];
        for (p, e) in experts.iter().enumerate().skip(1) {
            let first = *starts.last().expect("starts holds 0") as usize;
            if *e != experts[p - 1] || p - first == tile {
                starts.push(p as u32);
            }
        }
        if routes > 0 {
            starts.push(routes as u32);
        }
        let mut words = offsets.to_vec();
        for rows in inputs {
            debug_assert_eq!(rows.len(), routes);
            words.extend_from_slice(rows);
        }
        words.extend_from_slice(&starts);
        Self {
            words,
            routes,
            matrices: offsets.len() / routes.max(1),
            inputs: inputs.len(),
            starts,
        }
    }

    /// Number of routes.
    pub fn routes(&self) -> usize {
        self.routes
    }

    /// Number of tiles.
    pub fn tiles(&self) -> usize {
        self.starts.len() - 1
    }

    /// The pipeline these tiles need: 1 when every tile holds one route, else
    /// [`ROUTE_TILE`].
    pub fn pipeline_tile(&self) -> usize {
        if self.tiles() == self.routes {
            1
        } else {
            ROUTE_TILE
        }
    }

    /// First route of tile `i`.
    pub fn first_route(&self, i: usize) -> usize {
        self.starts[i] as usize
    }

    /// Push constants of a dispatch of matrix `matrix` (`rows` x `cols`, `row_bytes` a row)
    /// reading input kind `input`, from tile `tile_base` on, the matrices `w_base` bytes into
    /// the weight buffer (an imported span's lead-in; 0 elsewhere).
    #[allow(clippy::too_many_arguments)] // one per push-constant word the shaders read
    pub fn push(
        &self,
        rows: usize,
        cols: usize,
        row_bytes: usize,
        matrix: usize,
        input: usize,
        tile_base: usize,
        w_base: usize,
    ) -> [u32; 8] {
        debug_assert!(matrix < self.matrices && input < self.inputs);
        [
            rows as u32,
            cols as u32,
            row_bytes as u32,
            tile_base as u32,
            (matrix * self.routes) as u32,
            ((self.matrices + input) * self.routes) as u32,
            ((self.matrices + self.inputs) * self.routes) as u32,
            w_base as u32,
        ]
    }
}

/// Records `kernel` over tiles `tiles` of `meta` (whose routes' weights all lie in
/// `buffers[0]`), one dispatch per `maxComputeWorkGroupCount[1]` tiles; `push` gives the push
/// constants for a dispatch starting at a tile.
pub(crate) fn record_tiles(
    commands: &mut Commands,
    kernel: &Kernel,
    device: &Device,
    buffers: [&Buffer; 4],
    rows: usize,
    tiles: std::ops::Range<usize>,
    push: impl Fn(usize) -> [u32; 8],
) -> Result<(), VulkanError> {
    let per_dispatch = device.max_groups[1] as usize;
    let mut base = tiles.start;
    while base < tiles.end {
        let count = (tiles.end - base).min(per_dispatch);
        let (cmd, set) = commands.next(kernel)?;
        kernel.record(
            cmd,
            set,
            &buffers,
            &push(base),
            [rows as u32, count as u32, 1],
        );
        base += count;
    }
    Ok(())
}
