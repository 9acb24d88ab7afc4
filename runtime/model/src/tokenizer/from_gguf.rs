//! Reading a [`TokenizerSpec`] from GGUF metadata (`tokenizer.ggml.*`).

use super::{Tokenizer, TokenizerSpec};
use crate::gguf::{GgufFile, Value};
use crate::ModelError;

fn strings(file: &GgufFile, key: &'static str, required: bool) -> Result<Vec<String>, ModelError> {
    match file.metadata(key) {
        None if !required => Ok(Vec::new()),
        None => Err(ModelError::TokenizerInvalid {
            key,
            detail: "missing".into(),
        }),
        Some(v) => v
            .as_array()
            .and_then(|a| {
                a.iter()
                    .map(|s| s.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
            })
            .ok_or_else(|| ModelError::TokenizerInvalid {
                key,
                detail: "not an array of strings".into(),
            }),
    }
}

fn id(file: &GgufFile, key: &'static str) -> Result<Option<u32>, ModelError> {
    match file.metadata(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| ModelError::TokenizerInvalid {
                key,
                detail: format!("not a token id: {v:?}"),
            }),
    }
}

impl Tokenizer {
    /// The tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, ModelError> {
        let model = match file.metadata("tokenizer.ggml.model") {
            Some(Value::String(s)) => s.clone(),
            _ => {
                return Err(ModelError::TokenizerInvalid {
                    key: "tokenizer.ggml.model",
                    detail: "missing or not a string".into(),
                })
            }
        };
        let token_types = match file.metadata("tokenizer.ggml.token_type") {
            None => Vec::new(),
            Some(v) => v
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .map(|x| x.as_i64().and_then(|i| i32::try_from(i).ok()))
                        .collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| ModelError::TokenizerInvalid {
                    key: "tokenizer.ggml.token_type",
                    detail: "not an integer array".into(),
                })?,
        };
        let spec = TokenizerSpec {
            model,
            tokens: strings(file, "tokenizer.ggml.tokens", true)?,
            token_types,
            merges: strings(file, "tokenizer.ggml.merges", false)?,
            pre: file
                .metadata("tokenizer.ggml.pre")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_owned(),
            bos: id(file, "tokenizer.ggml.bos_token_id")?,
            eos: id(file, "tokenizer.ggml.eos_token_id")?,
            add_bos: file
                .metadata("tokenizer.ggml.add_bos_token")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        Self::new(spec)
    }
}
