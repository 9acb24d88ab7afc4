// What the tiled matvecs (matvec.comp, matvec_fast.comp) share: the route metadata binding,
// the push constants, and the tile size (ROUTE_TILE, a specialization constant: the host
// builds each matvec pipeline twice, with 1 and with moe-vulkan's ROUTE_TILE).
//
// A tile is up to ROUTE_TILE consecutive routes of one expert (the host sorts routes by
// expert and cuts each expert's run into tiles). Route p reads input row
// meta[in_base + p] (its token for gate and up, p itself for down) and writes output row p.

// Per route and matrix, the byte offset of its expert's matrix in `w` (at off_base + p);
// per route, its input row (at in_base + p); tile i's routes are
// meta[tiles_at + i] .. meta[tiles_at + i + 1].
layout(std430, binding = 3) readonly buffer RouteMeta { uint meta[]; };

// The most routes one workgroup computes.
layout(constant_id = 0) const uint ROUTE_TILE = 1u;

layout(push_constant) uniform Push {
    uint rows;      // output features of one expert matrix
    uint cols;      // input features (a multiple of 32)
    uint row_bytes; // bytes of one row of blocks
    uint tile_base; // first tile of this dispatch
    uint off_base;  // where this matrix's offsets start in meta
    uint in_base;   // where this matrix's input rows start in meta
    uint tiles_at;  // where the tile starts are in meta
    uint w_base;    // bytes before every matrix in `w` (an imported span's lead-in)
} pc;
