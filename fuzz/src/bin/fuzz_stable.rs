//! A stable-toolchain driver for the fuzz target bodies: random inputs and random mutations
//! of seed inputs, no coverage feedback. For machines without nightly (see README.md).
//!
//! ```text
//! cargo run --release --manifest-path fuzz/Cargo.toml --no-default-features \
//!     --features stable-driver --bin fuzz_stable -- frame_decode 200000 [seed]
//! ```

use std::process::ExitCode;

/// A small, seedable generator (xorshift64*), so that a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const PLACEMENT_SEEDS: &[&str] = &[
    "[[node]]\nname = \"e1\"\naddr = \"127.0.0.1:7001\"\nshards = \"0-9\"\n\
     [[node]]\nname = \"e2\"\naddr = \"local\"\nshards = \"8-15\"\nlayers = { \"2\" = \"0-15\" }\n",
    "[[node]]\nname = \"a\"\naddr = \"h.example:1\"\nmetrics_addr = \"[::1]:2\"\nshards = \"0-15\"\n",
    "0-3,7,9-15",
];

/// Bytes the mutations insert: structure characters of TOML, JSON and placement lists.
const TEXT_BYTES: &[u8] = b"-,=\"[]{}0123456789\n";
/// ... and of HTTP/1 requests (line ends, header separators, chunk sizes).
const HTTP_BYTES: &[u8] = b"\r\n: ,\"[]{}0123456789aF-;\t";

fn mutate(rng: &mut Rng, seed: &[u8], alphabet: &[u8]) -> Vec<u8> {
    let mut input = seed.to_vec();
    for _ in 0..=rng.below(8) {
        match rng.below(4) {
            0 if !input.is_empty() => {
                let at = rng.below(input.len());
                input[at] = rng.next() as u8;
            }
            1 if !input.is_empty() => {
                let at = rng.below(input.len());
                input.remove(at);
            }
            2 => {
                let at = rng.below(input.len() + 1);
                input.insert(at, alphabet[rng.below(alphabet.len())]);
            }
            _ => input.truncate(rng.below(input.len() + 1)),
        }
    }
    input
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let target = args.get(1).map(String::as_str).unwrap_or("");
    let iterations: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let mut rng = Rng(args
        .get(3)
        .and_then(|a| a.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15)
        | 1);
    let seeds: Vec<Vec<u8>> = match target {
        "frame_decode" => (0u8..6)
            .flat_map(|pick| [vec![0u8], vec![1], vec![2, pick]])
            .collect(),
        "placement_parse" => PLACEMENT_SEEDS
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect(),
        "gguf_reader" => moe_fuzz::gguf_seeds(),
        "http_request" => moe_fuzz::http_seeds(),
        _ => {
            eprintln!(
                "usage: fuzz_stable frame_decode|placement_parse|gguf_reader|http_request [iterations] [seed]"
            );
            return ExitCode::FAILURE;
        }
    };
    let body: fn(&[u8]) -> Option<()> = match target {
        "frame_decode" => moe_fuzz::frame_decode,
        "gguf_reader" => moe_fuzz::gguf_reader,
        "http_request" => moe_fuzz::http_request,
        _ => moe_fuzz::placement_parse,
    };
    let mut accepted = 0u64;
    for i in 0..iterations {
        let input = if i % 4 == 0 {
            (0..rng.below(512)).map(|_| rng.next() as u8).collect()
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            let alphabet = if target == "http_request" {
                HTTP_BYTES
            } else {
                TEXT_BYTES
            };
            let mut input = mutate(&mut rng, seed, alphabet);
            if target == "frame_decode" && input.first() == Some(&2) {
                // Mode 2 takes (offset, byte) edits after the pick.
                input.extend((0..3 * rng.below(6)).map(|_| rng.next() as u8));
            }
            input
        };
        if body(&input).is_some() {
            accepted += 1;
        }
    }
    println!("{target}: {iterations} inputs, {accepted} accepted, no panic");
    ExitCode::SUCCESS
}
