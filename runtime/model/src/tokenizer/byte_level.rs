//! GPT-2's byte ↔ character table: every byte 0..=255 stands for one printable character, so
//! byte-level BPE vocabularies can store arbitrary bytes as text.
//!
//! Printable Latin-1 bytes (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) stand for themselves; the other 68
//! bytes, in increasing order, take U+0100, U+0101, ... (space 0x20 becomes `Ġ` U+0120,
//! newline 0x0A becomes `Ċ` U+010A). This is `bytes_to_unicode` of GPT-2's `encoder.py`,
//! which llama.cpp's `unicode_byte_to_utf8_map` reproduces.

/// One past the largest character the table uses (U+0143).
const CHAR_TABLE_LEN: usize = 0x144;

const fn is_self_printable(byte: usize) -> bool {
    (byte >= 0x21 && byte <= 0x7E)
        || (byte >= 0xA1 && byte <= 0xAC)
        || (byte >= 0xAE && byte <= 0xFF)
}

const fn build_byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    let mut byte = 0usize;
    while byte < 256 {
        let code = if is_self_printable(byte) {
            byte as u32
        } else {
            shifted += 1;
            0x100 + shifted - 1
        };
        table[byte] = match char::from_u32(code) {
            Some(c) => c,
            None => panic!("byte table code point is not a char"),
        };
        byte += 1;
    }
    table
}

const fn build_char_to_byte() -> [i16; CHAR_TABLE_LEN] {
    let mut table = [-1i16; CHAR_TABLE_LEN];
    let mut byte = 0usize;
    while byte < 256 {
        table[BYTE_TO_CHAR[byte] as usize] = byte as i16;
        byte += 1;
    }
    table
}

/// The character that stands for each byte.
pub(crate) const BYTE_TO_CHAR: [char; 256] = build_byte_to_char();

/// For each character below U+0144, the byte it stands for, or -1.
const CHAR_TO_BYTE: [i16; CHAR_TABLE_LEN] = build_char_to_byte();

/// The byte `c` stands for, or `None` when `c` is not one of the 256 table characters.
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let code = c as usize;
    if code < CHAR_TABLE_LEN && CHAR_TO_BYTE[code] >= 0 {
        Some(CHAR_TO_BYTE[code] as u8)
    } else {
        None
    }
}

/// Appends the bytes a byte-level token text stands for. A character outside the table
/// (possible only in a hand-made vocabulary) is passed through as its own UTF-8, where
/// llama.cpp would write `[UNK_BYTE_0x..]`.
pub(crate) fn decode_into(text: &str, out: &mut Vec<u8>) {
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

/// The byte-level text of raw bytes (the form NORMAL token texts take in the vocabulary).
#[cfg(test)]
pub(crate) fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| BYTE_TO_CHAR[b as usize]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_a_bijection_with_gpt2_landmarks() {
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(BYTE_TO_CHAR[b'\t' as usize], 'ĉ');
        assert_eq!(BYTE_TO_CHAR[b'a' as usize], 'a');
        assert_eq!(BYTE_TO_CHAR[0xAD], 'Ń');
        assert_eq!(BYTE_TO_CHAR[0], 'Ā');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(BYTE_TO_CHAR[b as usize]), Some(b));
        }
        assert_eq!(char_to_byte('€'), None);
    }

    #[test]
    fn encode_then_decode_is_identity() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut back = Vec::new();
        decode_into(&encode(&bytes), &mut back);
        assert_eq!(back, bytes);
    }
}
