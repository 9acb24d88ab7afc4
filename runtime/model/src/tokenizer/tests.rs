//! Unit tests of `Tokenizer` and `StreamDecoder` on a hand-made vocabulary: the 256 byte
//! tokens (id = byte), a few merges, and one token of each special type.

use std::sync::Arc;

use proptest::prelude::*;

use super::byte_level::BYTE_TO_CHAR;
use super::*;

const BOS: u32 = 256;
const THINK: u32 = 257;
const PAD: u32 = 258;
const EOS: u32 = 259;

/// Merged tokens after the specials, with the merges that build them (in rank order).
const MERGED: [(&str, &str); 4] = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("â", "Ĥ")];

fn spec() -> TokenizerSpec {
    let mut tokens: Vec<String> = BYTE_TO_CHAR.iter().map(|c| c.to_string()).collect();
    let mut token_types = vec![1; 256];
    for (text, ty) in [
        ("<|bos|>", TokenType::Control),
        ("<think>", TokenType::UserDefined),
        ("[PAD258]", TokenType::Unused),
        ("<|eos|>", TokenType::Control),
    ] {
        tokens.push(text.into());
        token_types.push(ty as i32);
    }
    for (left, right) in MERGED {
        tokens.push(format!("{left}{right}"));
        token_types.push(1);
    }
    TokenizerSpec {
        model: "gpt2".into(),
        tokens,
        token_types,
        merges: MERGED.iter().map(|(l, r)| format!("{l} {r}")).collect(),
        pre: "gpt-2".into(),
        bos: Some(BOS),
        eos: Some(EOS),
        add_bos: true,
    }
}

fn tokenizer() -> Tokenizer {
    Tokenizer::new(spec()).unwrap()
}

fn err(spec: TokenizerSpec) -> String {
    Tokenizer::new(spec).unwrap_err().to_string()
}

#[test]
fn accessors() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 264);
    assert_eq!(
        (tok.bos(), tok.eos(), tok.add_bos()),
        (Some(BOS), Some(EOS), true)
    );
    assert_eq!(tok.token_to_id("<|bos|>"), Some(BOS));
    assert_eq!(tok.token_to_id("Ġthe"), Some(262));
    assert_eq!(tok.token_text(THINK), Some("<think>"));
    assert_eq!(tok.token_type(PAD), Some(TokenType::Unused));
    assert!(tok.is_control(EOS) && !tok.is_control(THINK) && !tok.is_control(9999));
    assert_eq!(tok.pre_tokenizer(), PreTokenizerKind::Gpt2);
    assert_eq!(tok.merge_count(), 4);
    assert_eq!(tok.special_token_count(), 3);
}

#[test]
fn encodes_with_merges_and_specials() {
    let tok = tokenizer();
    let the = tok.token_to_id("Ġthe").unwrap();
    assert_eq!(tok.encode(" the", false), [the]);
    assert_eq!(tok.encode("<|bos|>a the", true), [BOS, b'a' as u32, the]);
    // Without parse_special the control text is plain text, but <think> is still a token.
    let plain = tok.encode("<|bos|><think>", false);
    assert_eq!(&plain[..7], tok.encode("<|bos|>", false).as_slice());
    assert_eq!(plain.last(), Some(&THINK));
    assert_eq!(plain.len(), 8);
    // "€" = E2 82 AC: the first two bytes have a merge.
    assert_eq!(tok.encode("€", false), [263, 0xAC]);
    assert!(tok.encode("", true).is_empty());
}

#[test]
fn decode_renders_each_token_type() {
    let tok = tokenizer();
    let ids = [BOS, b'h' as u32, THINK, PAD, 261, EOS, 100_000];
    assert_eq!(tok.decode(&ids), b"h<think>he");
    assert_eq!(tok.decode_with_control(&ids), b"<|bos|>h<think>he<|eos|>");
    assert_eq!(tok.decode_lossy(&[0xE2]), "\u{FFFD}");
    assert_eq!(tok.token_piece(b' ' as u32, false), b" ");
}

#[test]
fn refuses_unsupported_kinds() {
    let mut s = spec();
    s.model = "llama".into();
    assert!(err(s).contains("tokenizer.ggml.model = \"llama\" is not supported"));
    let mut s = spec();
    s.pre = "qwen2".into();
    let e = err(s);
    assert!(
        e.contains("tokenizer.ggml.pre = \"qwen2\"") && e.contains("kimi-k2"),
        "{e}"
    );
}

#[test]
fn refuses_inconsistent_vocabularies() {
    let mut s = spec();
    s.token_types.pop();
    assert!(err(s).contains("263 types for 264 tokens"));
    let mut s = spec();
    s.token_types[7] = 9;
    assert!(err(s).contains("token 7: type 9"));
    let mut s = spec();
    s.eos = Some(264);
    assert!(err(s).contains("eos_token_id: id 264 outside the 264 tokens"));
    let mut s = spec();
    s.bos = None;
    assert!(err(s).contains("add_bos_token is true"));
    let mut s = spec();
    s.merges.push("nospace".into());
    assert!(err(s).contains("merge 4 \"nospace\""));
    let mut s = spec();
    s.tokens.clear();
    s.token_types.clear();
    assert!(err(s).contains("no tokens"));
}

#[test]
fn empty_types_mean_normal_and_empty_texts_get_names() {
    let mut s = spec();
    s.token_types.clear();
    s.tokens[PAD as usize] = String::new();
    let tok = Tokenizer::new(s).unwrap();
    assert_eq!(tok.token_type(BOS), Some(TokenType::Normal));
    assert_eq!(tok.token_text(PAD), Some("[EMPTY_258]"));
}

#[test]
fn refuses_counts_over_the_limits() {
    let mut s = spec();
    s.tokens = vec![String::new(); TOKENIZER_TOKENS_MAX + 1];
    s.token_types.clear();
    assert!(err(s).contains("exceed TOKENIZER_TOKENS_MAX"));
    let mut s = spec();
    s.merges = vec![String::new(); TOKENIZER_MERGES_MAX + 1];
    assert!(err(s).contains("exceed TOKENIZER_MERGES_MAX"));
}

#[test]
fn stream_decoder_holds_back_split_characters() {
    let tok = tokenizer();
    // "é€😀" byte by byte: C3 A9 | E2 82 AC | F0 9F 98 80.
    let ids: Vec<u32> = "é€😀".bytes().map(u32::from).collect();
    let mut stream = StreamDecoder::new(&tok);
    let pieces: Vec<String> = ids.iter().map(|&id| stream.push(id)).collect();
    assert_eq!(pieces, ["", "é", "", "", "€", "", "", "", "😀"]);
    assert_eq!(stream.pending_len(), 0);
    assert_eq!(stream.flush(), "");

    // A merged token that ends inside a character (E2 82) and one that completes it.
    let mut stream = StreamDecoder::new(Arc::new(tokenizer()));
    assert_eq!(stream.push(263), "");
    assert_eq!(stream.pending_len(), 2);
    assert_eq!(stream.push(0xAC), "€");
}

#[test]
fn stream_decoder_replaces_invalid_bytes_and_flushes_unfinished_ones() {
    let tok = tokenizer();
    let mut stream = StreamDecoder::new(&tok);
    assert_eq!(stream.push(b'a' as u32), "a");
    assert_eq!(stream.push(0xFF), "\u{FFFD}");
    assert_eq!(stream.push(0xE2), "");
    // E2 followed by 'b' can never complete: one U+FFFD, then 'b'.
    assert_eq!(stream.push(b'b' as u32), "\u{FFFD}b");
    assert_eq!(stream.push(0xF0), "");
    assert_eq!(stream.flush(), "\u{FFFD}");
    assert_eq!(stream.push(b'c' as u32), "c");
}

#[test]
fn stream_decoder_renders_control_only_when_asked() {
    let tok = tokenizer();
    let mut hidden = StreamDecoder::new(&tok);
    let mut shown = StreamDecoder::new(&tok).render_control(true);
    assert_eq!(hidden.push(EOS), "");
    assert_eq!(shown.push(EOS), "<|eos|>");
}

proptest! {
    #[test]
    fn encode_then_decode_round_trips(text in "\\PC{0,40}|[ \\t\\n\\r€a-z<|>]{0,40}") {
        let tok = tokenizer();
        // Without parse_special every token decodes to its text, so the round trip is exact.
        prop_assert_eq!(tok.decode(&tok.encode(&text, false)), text.as_bytes());
    }

    #[test]
    fn stream_pieces_concatenate_to_the_lossy_decode(ids in proptest::collection::vec(0u32..270, 0..40)) {
        let tok = tokenizer();
        let mut stream = StreamDecoder::new(&tok);
        let mut text: String = ids.iter().map(|&id| stream.push(id)).collect();
        prop_assert!(stream.pending_len() <= 3);
        text.push_str(&stream.flush());
        prop_assert_eq!(text, tok.decode_lossy(&ids));
    }
}
