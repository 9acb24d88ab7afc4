//! The reference fixtures' manifests, parsed once for every test that walks them: each case of
//! each GGUF with its tokens and the positions that may be compared (those before the
//! case's first near tie; see `../shared/fixtures/README.md`).
//!
//! The one manifest parser: the model tests, the end-to-end tests and the faithfulness
//! reports all walk the cases through [`fixture_cases`].

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::DevDataError;

/// The reference fixtures (`../shared/fixtures` beside the workspace root; read-only).
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")
}

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

/// Token ids from a JSON array (`what` names it in the error).
pub fn ids(v: &Value, what: &str) -> Result<Vec<u32>, DevDataError> {
    let bad = || DevDataError::Fixture(format!("{what}: expected an array of token ids"));
    v.as_array()
        .ok_or_else(bad)?
        .iter()
        .map(|t| {
            t.as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .ok_or_else(bad)
        })
        .collect()
}

/// A string field of a manifest entry.
fn field<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a str, DevDataError> {
    v[key]
        .as_str()
        .ok_or_else(|| DevDataError::Fixture(format!("{what}: no string field {key:?}")))
}

/// Every case of every GGUF in fixture folder `dir`, in manifest order.
pub fn fixture_cases(dir: &str) -> Result<Vec<FixtureCase>, DevDataError> {
    let root = fixtures_dir().join(dir);
    let path = root.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|source| DevDataError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let manifest: Value = serde_json::from_str(&text)
        .map_err(|e| DevDataError::Fixture(format!("{}: {e}", path.display())))?;
    let files = manifest["files"]
        .as_object()
        .ok_or_else(|| DevDataError::Fixture(format!("{}: no \"files\" object", path.display())))?;
    let mut out = Vec::new();
    for (tag, file) in files {
        let cases = file
            .get("cases")
            .unwrap_or(&manifest["cases"])
            .as_array()
            .ok_or_else(|| DevDataError::Fixture(format!("{dir}/{tag}: no \"cases\" array")))?;
        let ties = file
            .get("near_ties")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (i, case) in cases.iter().enumerate() {
            let what = format!("{dir}/{tag} case {i}");
            let tokens = ids(&case["tokens"], &what)?;
            let limit = ties
                .iter()
                .filter(|t| t["case"].as_u64() == Some(i as u64))
                .filter_map(|t| t["position"].as_u64())
                .map(|p| p as usize)
                .min()
                .unwrap_or(tokens.len());
            out.push(FixtureCase {
                gguf: root.join(field(file, "gguf", &what)?),
                ref_dir: root.join(field(file, "reference", &what)?),
                json: case.clone(),
                prompt: field(case, "prompt", &what)?.to_string(),
                what,
                tokens,
                limit,
            });
        }
    }
    Ok(out)
}

/// Every case of every GGUF of every fixture folder.
pub fn all_fixture_cases() -> Result<Vec<FixtureCase>, DevDataError> {
    let mut out = Vec::new();
    for dir in FIXTURE_DIRS {
        out.extend(fixture_cases(dir)?);
    }
    Ok(out)
}
