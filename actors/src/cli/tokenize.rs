//! `moe-node tokenize`: token ids of a text.

use std::path::PathBuf;

use anyhow::Context;
use moe_model::gguf::GgufFile;
use moe_model::tokenizer::Tokenizer;

/// Arguments of `tokenize`.
#[derive(Debug, clap::Args)]
pub struct TokenizeArgs {
    /// GGUF file holding the vocabulary.
    #[arg(long, short = 'm')]
    model: PathBuf,
    /// Text to tokenize.
    #[arg(long)]
    text: String,
    /// Treat special-token text (e.g. `<|im_end|>`) as plain text.
    #[arg(long)]
    no_special: bool,
    /// Prepend BOS when the vocabulary asks for it (`tokenizer.ggml.add_bos_token`).
    #[arg(long)]
    add_bos: bool,
}

/// Prints the ids as one JSON array.
pub fn run(a: TokenizeArgs) -> anyhow::Result<()> {
    let file =
        GgufFile::open(&a.model).with_context(|| format!("opening {}", a.model.display()))?;
    let tok = Tokenizer::from_gguf(&file)?;
    let mut ids = Vec::new();
    if a.add_bos && tok.add_bos() {
        ids.extend(tok.bos());
    }
    ids.extend(tok.encode(&a.text, !a.no_special));
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}
