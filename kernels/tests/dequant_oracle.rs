//! Bit-exact comparison of `dequantize_row` with gguf-py's `gguf.quants.dequantize`, using the
//! vectors written by `tests/vectors/gen_vectors.py` (one JSON file per type).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use moe_kernels::{dequantize_row, dequantize_rows, GgmlType, KernelError};

struct Vectors {
    block_elems: usize,
    n_blocks: usize,
    blocks: Vec<u8>,
    expected_bits: Vec<u32>,
}

fn hex(s: &str) -> Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("odd hex length {}", s.len());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("bad hex digit"))
        .collect()
}

fn load(ty: GgmlType) -> Result<Vectors> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(format!("{}.json", ty.name()));
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let doc: serde_json::Value = serde_json::from_str(&text)?;
    let field = |k: &str| {
        doc[k]
            .as_u64()
            .with_context(|| format!("{}: {k}", path.display()))
    };
    let id = u32::try_from(field("ggml_id")?)?;
    if GgmlType::from_id(id)? != ty {
        bail!("{}: id {id} is not {}", path.display(), ty.name());
    }
    if field("block_bytes")? as usize != ty.block_bytes() {
        bail!("{}: block_bytes disagrees with GgmlType", path.display());
    }
    let block_elems = field("block_elems")? as usize;
    if block_elems != ty.block_elems() {
        bail!("{}: block_elems disagrees with GgmlType", path.display());
    }
    let blocks = hex(doc["blocks_hex"].as_str().context("blocks_hex")?)?;
    let expected = hex(doc["expected_f32_le_hex"]
        .as_str()
        .context("expected_f32_le_hex")?)?;
    let expected_bits = expected
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Vectors {
        block_elems,
        n_blocks: field("n_blocks")? as usize,
        blocks,
        expected_bits,
    })
}

/// Every element of every block, decoded one block per row and as one long row, must have
/// exactly gguf-py's f32 bits.
#[test]
fn dequantize_matches_gguf_py_bit_for_bit() -> Result<()> {
    for ty in GgmlType::ALL {
        let v = load(ty)?;
        let n = v.n_blocks * v.block_elems;
        assert_eq!(v.expected_bits.len(), n, "{}", ty.name());
        assert_eq!(
            v.blocks.len(),
            v.n_blocks * ty.block_bytes(),
            "{}",
            ty.name()
        );

        let mut whole = vec![0f32; n];
        dequantize_row(ty, &v.blocks, &mut whole)?;
        let mut per_block = vec![0f32; n];
        dequantize_rows(ty, &v.blocks, v.block_elems, &mut per_block)?;

        for (i, want) in v.expected_bits.iter().enumerate() {
            for (how, got) in [("row", whole[i]), ("rows", per_block[i])] {
                assert_eq!(
                    got.to_bits(),
                    *want,
                    "{} ({how}) element {i} (block {}): got {got:e} want {:e}",
                    ty.name(),
                    i / v.block_elems,
                    f32::from_bits(*want)
                );
            }
        }
    }
    Ok(())
}

#[test]
fn wrong_lengths_are_errors() {
    for ty in GgmlType::ALL {
        let block = vec![0u8; ty.block_bytes()];
        let elems = ty.block_elems();
        // One byte short and one byte long.
        let mut out = vec![0f32; elems];
        assert!(matches!(
            dequantize_row(ty, &block[..block.len() - 1], &mut out),
            Err(KernelError::LengthMismatch { .. })
        ));
        let long = vec![0u8; ty.block_bytes() + 1];
        assert!(matches!(
            dequantize_row(ty, &long, &mut out),
            Err(KernelError::LengthMismatch { .. })
        ));
        // A destination that is not whole blocks.
        if elems > 1 {
            let mut odd = vec![0f32; elems + 1];
            assert!(matches!(
                dequantize_row(ty, &block, &mut odd),
                Err(KernelError::RowNotBlockAligned { .. })
            ));
        }
        // rows: a destination that is not a multiple of cols, and cols = 0.
        let mut two = vec![0f32; 2 * elems];
        assert!(dequantize_rows(ty, &block, elems, &mut two).is_err());
        assert!(dequantize_rows(ty, &block, 0, &mut out).is_err());
    }
}

#[test]
fn unsupported_type_ids_are_errors() {
    // Q8_1 (9), Q8_K (15), integer and f64 types (24..28), MXFP4 (39) and an unknown id.
    for id in [9u32, 15, 24, 28, 39, 9999] {
        match GgmlType::from_id(id) {
            Err(KernelError::UnsupportedType { id: got, .. }) => assert_eq!(got, id),
            other => panic!("id {id}: expected UnsupportedType, got {other:?}"),
        }
    }
    for ty in GgmlType::ALL {
        assert_eq!(GgmlType::from_id(ty.id()).ok(), Some(ty));
    }
}
