//! The reference fixtures' manifests, parsed once for every test that walks them: each case of
//! each GGUF with its tokens and the positions that may be compared (those before the
//! case's first near tie; see `../shared/fixtures/README.md`).

use std::path::PathBuf;

use serde_json::Value;

use crate::fixtures_dir;

/// The fixture folders.
pub const FIXTURE_DIRS: [&str; 2] = ["kimi-k25-tiny", "kimi-k25-kq"];

/// One case of one GGUF file.
#[derive(Debug, Clone)]
pub struct FixtureCase {
    /// `folder/TAG case N`, for messages.
    pub what: String,
    /// The GGUF file.
    pub gguf: PathBuf,
    /// Where its reference `.npy` files are.
    pub ref_dir: PathBuf,
    /// The case's manifest entry (prompt, tokens, logits, hidden_states, routing, ...).
    pub json: Value,
    /// The prompt text.
    pub prompt: String,
    /// Its token ids.
    pub tokens: Vec<u32>,
    /// Positions before the first near tie (all of them when there is none).
    pub limit: usize,
}

/// Token ids from a JSON array.
pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("an array of token ids")
        .iter()
        .map(|t| t.as_u64().expect("a token id") as u32)
        .collect()
}

/// Every case of every GGUF in fixture folder `dir`, in manifest order.
pub fn fixture_cases(dir: &str) -> Vec<FixtureCase> {
    let root = fixtures_dir().join(dir);
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("manifest.json")).expect("manifest.json"),
    )
    .expect("manifest.json is JSON");
    let mut out = Vec::new();
    for (tag, file) in manifest["files"].as_object().expect("files") {
        let cases = file
            .get("cases")
            .unwrap_or(&manifest["cases"])
            .as_array()
            .expect("cases");
        let ties = file
            .get("near_ties")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (i, case) in cases.iter().enumerate() {
            let tokens = ids(&case["tokens"]);
            let limit = ties
                .iter()
                .filter(|t| t["case"].as_u64() == Some(i as u64))
                .filter_map(|t| t["position"].as_u64())
                .map(|p| p as usize)
                .min()
                .unwrap_or(tokens.len());
            out.push(FixtureCase {
                what: format!("{dir}/{tag} case {i}"),
                gguf: root.join(file["gguf"].as_str().expect("gguf")),
                ref_dir: root.join(file["reference"].as_str().expect("reference")),
                json: case.clone(),
                prompt: case["prompt"].as_str().expect("prompt").to_string(),
                tokens,
                limit,
            });
        }
    }
    out
}

/// Every case of every GGUF of every fixture folder.
pub fn all_fixture_cases() -> Vec<FixtureCase> {
    FIXTURE_DIRS.iter().flat_map(|d| fixture_cases(d)).collect()
}
