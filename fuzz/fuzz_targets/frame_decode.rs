//! libFuzzer target: `moe_cluster::wire::decode_frame` on arbitrary and mutated frames.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = moe_fuzz::frame_decode(data);
});
