//! libFuzzer target: `moe_model::gguf::GgufFile::from_bytes`, then config, model and tokenizer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = moe_fuzz::gguf_reader(data);
});
