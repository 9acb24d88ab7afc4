//! Writes a target's seed inputs into a directory, as a libFuzzer corpus:
//! `write_seeds gguf_reader fuzz/corpus/gguf_reader` (see README.md).

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(target), Some(dir)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: write_seeds gguf_reader|http_request DIR");
        return ExitCode::FAILURE;
    };
    let seeds = match target.as_str() {
        "gguf_reader" => moe_fuzz::gguf_seeds(),
        "http_request" => moe_fuzz::http_seeds(),
        other => {
            eprintln!("write_seeds: no seeds for target {other:?} (gguf_reader, http_request)");
            return ExitCode::FAILURE;
        }
    };
    let dir = Path::new(dir);
    if let Err(e) = std::fs::create_dir_all(dir) {
        eprintln!("write_seeds: {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    for (i, seed) in seeds.iter().enumerate() {
        let path = dir.join(format!("seed-{i}"));
        if let Err(e) = std::fs::write(&path, seed) {
            eprintln!("write_seeds: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    println!("wrote {} seeds to {}", seeds.len(), dir.display());
    ExitCode::SUCCESS
}
