//! Per-call device buffers, grown on demand and reused, and the byte views uploads take.

use std::sync::Arc;

use crate::device::{Buffer, Device};
use crate::VulkanError;

/// `buf` with room for `bytes` (reallocated, doubling, when too small); `what` names it.
pub(crate) fn ensure<'a>(
    device: &Arc<Device>,
    buf: &'a mut Option<Buffer>,
    bytes: usize,
    what: &str,
) -> Result<&'a mut Buffer, VulkanError> {
    if bytes as u64 > device.max_binding_bytes() {
        return Err(VulkanError::DeviceLimit {
            tensor: what.into(),
            what: format!(
                "this call needs {bytes} bytes in one binding, past maxStorageBufferRange ({} bytes): send fewer tokens per call",
                device.max_binding_bytes()
            ),
        });
    }
    if buf.as_ref().is_none_or(|b| b.len < bytes) {
        let grown = buf
            .as_ref()
            .map_or(bytes, |b| (b.len * 2).max(bytes))
            .min(device.max_binding_bytes() as usize);
        *buf = None;
        *buf = Some(Buffer::new(device, grown, what)?);
    }
    Ok(buf.as_mut().expect("set above"))
}

/// `v`'s bytes.
pub(crate) fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and every byte of it is initialized; u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

/// `v`'s bytes.
pub(crate) fn u32_bytes(v: &[u32]) -> &[u8] {
    // SAFETY: as for f32.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

/// The first `out.len()` f32 values of `buf`, into `out`.
pub(crate) fn read_f32(buf: &Buffer, out: &mut [f32]) {
    for (v, b) in out.iter_mut().zip(buf.bytes().chunks_exact(4)) {
        *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}
