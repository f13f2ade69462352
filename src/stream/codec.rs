//! The text form of the strings a user pastes (tickets, join tokens): one encoding, so the
//! two cannot drift apart again.
//!
//! Canonical form: the type's prefix, then the lowercase, unpadded RFC 4648 base32 of the
//! value's postcard encoding — exactly the string [`TextCodec::to_text`] writes. Decoding
//! ignores whitespace around the text and refuses anything else that is not that exact
//! string (uppercase letters, stray bits in the last character, overlong postcard integers,
//! bytes after the value), so one value has one string, and the string a user compares is
//! the one a node checks.

use serde::{de::DeserializeOwned, Serialize};

/// Why a text is not the canonical form of a value. The types that use the codec turn it
/// into their own error, naming their own prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CodecError {
    /// Longer than the type's limit, checked before anything is decoded.
    #[error("{}", self.reason())]
    TooLong,
    /// It does not start with the type's prefix.
    #[error("{}", self.reason())]
    WrongPrefix,
    /// It has uppercase letters; the canonical text is lowercase.
    #[error("{}", self.reason())]
    Uppercase,
    /// A character outside the base32 alphabet, or a length or final character no encoder
    /// writes.
    #[error("{}", self.reason())]
    NotBase32,
    /// The bytes do not decode as the type.
    #[error("{}", self.reason())]
    Garbled,
    /// Bytes are left over after the value.
    #[error("{}", self.reason())]
    TrailingBytes,
    /// The value decodes but is written another way than its encoder writes it.
    #[error("{}", self.reason())]
    NotCanonical,
}

impl CodecError {
    /// The error as a short phrase, for the types' own `&'static str` error payloads.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            CodecError::TooLong => "too long",
            CodecError::WrongPrefix => "wrong prefix",
            CodecError::Uppercase => "it has uppercase letters: paste it exactly as printed",
            CodecError::NotBase32 => "not valid base32",
            CodecError::Garbled => "garbled contents",
            CodecError::TrailingBytes => "trailing bytes",
            CodecError::NotCanonical => "not in canonical form: paste it exactly as printed",
        }
    }
}

/// A value a user copies as one line of text: `PREFIX` + lowercase base32 of postcard.
pub(crate) trait TextCodec: Serialize + DeserializeOwned {
    /// Starts every string of the type; its last digit is the format version.
    const PREFIX: &'static str;
    /// Longest text accepted (after trimming): bounds every allocation a decode makes.
    const MAX_TEXT: usize;

    /// The canonical text of the value.
    fn to_text(&self) -> String {
        // Implementors are plain data, whose postcard encoding into a Vec cannot fail.
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        let mut text = Self::PREFIX.to_string();
        text.push_str(
            &data_encoding::BASE32_NOPAD
                .encode(&bytes)
                .to_ascii_lowercase(),
        );
        text
    }

    /// Parses the canonical text of a value; surrounding whitespace is ignored.
    fn from_text(text: &str) -> Result<Self, CodecError> {
        let text = text.trim();
        if text.len() > Self::MAX_TEXT {
            return Err(CodecError::TooLong);
        }
        let body = text
            .strip_prefix(Self::PREFIX)
            .ok_or(CodecError::WrongPrefix)?;
        if body.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(CodecError::Uppercase);
        }
        // The strict decoder refuses padding, impossible lengths and stray final bits.
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|_| CodecError::NotBase32)?;
        let (value, rest): (Self, &[u8]) =
            postcard::take_from_bytes(&bytes).map_err(|_| CodecError::Garbled)?;
        if !rest.is_empty() {
            return Err(CodecError::TrailingBytes);
        }
        // postcard accepts overlong integers, which would give one value many strings.
        if postcard::to_allocvec(&value).ok().as_deref() != Some(&bytes[..]) {
            return Err(CodecError::NotCanonical);
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Note {
        number: u32,
        words: Vec<u8>,
    }

    impl TextCodec for Note {
        const PREFIX: &'static str = "note1";
        const MAX_TEXT: usize = 64;
    }

    fn text_of(bytes: &[u8]) -> String {
        format!(
            "note1{}",
            data_encoding::BASE32_NOPAD
                .encode(bytes)
                .to_ascii_lowercase()
        )
    }

    #[test]
    fn the_canonical_text_round_trips_and_is_the_only_one() {
        let note = Note {
            number: 300,
            words: vec![1, 2, 3],
        };
        let text = note.to_text();
        assert_eq!(text, text_of(&[0xac, 0x02, 3, 1, 2, 3]));
        assert_eq!(Note::from_text(&format!("\t{text} \n")), Ok(note));
        let upper = format!("note1{}", text["note1".len()..].to_ascii_uppercase());
        assert_eq!(Note::from_text(&upper), Err(CodecError::Uppercase));
        let mut mixed = text.clone().into_bytes();
        if let Some(c) = mixed.iter_mut().rev().find(|c| c.is_ascii_lowercase()) {
            c.make_ascii_uppercase();
        }
        let mixed = String::from_utf8(mixed).unwrap();
        assert_eq!(Note::from_text(&mixed), Err(CodecError::Uppercase));
        assert_eq!(
            Note::from_text(&format!("NOTE1{}", &text[5..])),
            Err(CodecError::WrongPrefix)
        );
    }

    #[test]
    fn other_spellings_of_a_value_are_refused() {
        // 300 as a three-byte varint instead of two: the same value, another string.
        assert_eq!(
            Note::from_text(&text_of(&[0xac, 0x82, 0x00, 0])),
            Err(CodecError::NotCanonical)
        );
        assert_eq!(
            Note::from_text(&text_of(&[0xac, 0x02, 0, 9])),
            Err(CodecError::TrailingBytes)
        );
        // One byte is "aa" canonically; "ab" sets a bit past the end of the data.
        assert_eq!(Note::from_text("note1aa"), Err(CodecError::Garbled));
        assert_eq!(Note::from_text("note1ab"), Err(CodecError::NotBase32));
        assert_eq!(Note::from_text("note1aa======"), Err(CodecError::NotBase32));
        assert_eq!(Note::from_text("note1a"), Err(CodecError::NotBase32));
        assert_eq!(Note::from_text("note1a a"), Err(CodecError::NotBase32));
        let long = format!("note1{}", "a".repeat(64));
        assert_eq!(Note::from_text(&long), Err(CodecError::TooLong));
    }
}
