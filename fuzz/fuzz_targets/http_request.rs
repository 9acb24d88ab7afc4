//! libFuzzer target: raw bytes as one HTTP/1 connection to the request layer of
//! `moe-node serve` (hyper, API key and body limits, OpenAI request bodies).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = moe_fuzz::http_request(data);
});
