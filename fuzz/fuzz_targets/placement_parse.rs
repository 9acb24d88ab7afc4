//! libFuzzer target: `moe_cluster::placement::Placement::parse` and `ExpertSet::parse`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = moe_fuzz::placement_parse(data);
});
