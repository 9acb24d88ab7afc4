//! Minimal NumPy `.npy` (format 1.0/2.0) reading and writing of little-endian float32 arrays:
//! the format of the reference fixtures and of `moe-node logits --out`.

use std::io::Write;
use std::path::Path;

use crate::DevDataError;

/// Largest `.npy` header accepted, in bytes.
pub const NPY_HEADER_BYTES_MAX: usize = 64 * 1024;

/// A float32 array with its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyF32 {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

fn bad(path: &Path, msg: impl std::fmt::Display) -> DevDataError {
    DevDataError::InvalidInput(format!(
        "{}: not a little-endian float32 .npy file: {msg}",
        path.display()
    ))
}

/// Reads a C-order `<f4` array.
pub fn read_f32(path: &Path) -> Result<NpyF32, DevDataError> {
    let bytes = std::fs::read(path).map_err(|source| DevDataError::Io {
        path: path.display().to_string(),
        source,
    })?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad(path, "bad magic"));
    }
    let (hlen, hstart) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(path, format!("version {v}"))),
    };
    if hlen > NPY_HEADER_BYTES_MAX || hstart + hlen > bytes.len() {
        return Err(bad(path, "header length"));
    }
    let header = std::str::from_utf8(&bytes[hstart..hstart + hlen])
        .map_err(|_| bad(path, "header not UTF-8"))?;
    if !header.contains("'descr': '<f4'") {
        return Err(bad(path, format!("dtype in header {header:?}")));
    }
    if header.contains("'fortran_order': True") {
        return Err(bad(path, "fortran order"));
    }
    let shape_str = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad(path, "no shape"))?;
    let shape = shape_str
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(path, format!("shape {shape_str:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let n: usize = shape.iter().product();
    let body = &bytes[hstart + hlen..];
    if body.len() != n * 4 {
        return Err(bad(
            path,
            format!("{} data bytes for shape {shape:?}", body.len()),
        ));
    }
    let data = body
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(NpyF32 { shape, data })
}

/// Writes a C-order `<f4` array.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<(), DevDataError> {
    let io = |source| DevDataError::Io {
        path: path.display().to_string(),
        source,
    };
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Pad so that the data starts on a 64-byte boundary, header ends with '\n'.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    f.write_all(b"\x93NUMPY\x01\x00").map_err(io)?;
    f.write_all(&(header.len() as u16).to_le_bytes())
        .map_err(io)?;
    f.write_all(header.as_bytes()).map_err(io)?;
    for v in data {
        f.write_all(&v.to_le_bytes()).map_err(io)?;
    }
    f.flush().map_err(io)
}
