//! libFuzzer target: `moe_runtime::gguf::GgufFile::from_bytes`, then config, model and tokenizer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| moe_fuzz::gguf_reader(data));
