//! Parse, don't validate: each type here can only hold a valid value.
//! Parsers name the field they were given so errors point at the client's input.

use std::fmt;

use serde::Serialize;

/// One problem with one input field, as rendered in problem+json `errors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Collects every field error of one request, so a client learns them all at once.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    pub fn push(&mut self, error: FieldError) {
        self.0.push(error);
    }

    /// Records the error if there is one and hands back the value if not.
    pub fn check<T>(&mut self, result: Result<T, FieldError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                self.push(error);
                None
            }
        }
    }

    /// Records "is required" for a missing field.
    pub fn require<T>(&mut self, field: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.push(FieldError::new(field, "is required"));
        }
        value
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<FieldError> for ValidationErrors {
    fn from(error: FieldError) -> Self {
        Self(vec![error])
    }
}

fn not_blank(field: &str, raw: &str) -> Result<(), FieldError> {
    if raw.trim().is_empty() {
        return Err(FieldError::new(field, "must not be blank"));
    }
    Ok(())
}

/// At most `max` characters (not bytes: "é" counts once).
fn at_most(field: &str, raw: &str, max: usize) -> Result<(), FieldError> {
    if raw.chars().count() > max {
        return Err(FieldError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}

/// Text may hold line breaks and tabs but no other control characters
/// (Postgres cannot store NUL at all).
fn printable(field: &str, raw: &str) -> Result<(), FieldError> {
    if raw
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(FieldError::new(
            field,
            "must not contain control characters other than line breaks and tabs",
        ));
    }
    Ok(())
}

/// For one-line texts (names, statuses, URLs); message bodies may hold newlines.
fn single_line(field: &str, raw: &str) -> Result<(), FieldError> {
    if raw.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

macro_rules! text_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_inner(self) -> String {
                self.0
            }

            /// Wraps a value read back from the database, which only stores parsed values.
            pub fn from_trusted(raw: String) -> Self {
                Self(raw)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_newtype!(
    /// E.164: `+` then 7 to 15 digits, the first not 0.
    PhoneNumber
);

impl PhoneNumber {
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        let digits = raw.strip_prefix('+').ok_or_else(|| {
            FieldError::new(field, "must be in E.164 form: '+' then 7 to 15 digits")
        })?;
        let valid = (7..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if !valid {
            return Err(FieldError::new(
                field,
                "must be in E.164 form: '+' then 7 to 15 digits, not starting with 0",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The number without its `+`, as the WhatsApp Cloud API wants it in `to`.
    pub fn digits(&self) -> &str {
        &self.0[1..]
    }
}

text_newtype!(
    /// A text message: 1 to 4096 characters (WhatsApp's limit), not blank.
    MessageBody
);

impl MessageBody {
    pub const MAX_CHARS: usize = 4096;

    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        not_blank(field, raw)?;
        at_most(field, raw, Self::MAX_CHARS)?;
        printable(field, raw)?;
        Ok(Self(raw.to_owned()))
    }
}

text_newtype!(
    /// A user's status text ("online", "Sedang sibuk dalam rapat."): at most 139
    /// characters, WhatsApp's limit for the "about" text.
    StatusText
);

impl StatusText {
    pub const MAX_CHARS: usize = 139;

    /// A status update's text: 1 to 139 characters, not blank.
    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        not_blank(field, raw)?;
        Self::parse_initial(field, raw)
    }

    /// A user's starting status, which may be empty.
    pub fn parse_initial(field: &str, raw: &str) -> Result<Self, FieldError> {
        at_most(field, raw, Self::MAX_CHARS)?;
        single_line(field, raw)?;
        Ok(Self(raw.to_owned()))
    }
}

text_newtype!(
    /// A user's display name: 1 to 256 characters, not blank.
    UserName
);

impl UserName {
    pub const MAX_CHARS: usize = 256;

    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        not_blank(field, raw)?;
        at_most(field, raw, Self::MAX_CHARS)?;
        single_line(field, raw)?;
        Ok(Self(raw.to_owned()))
    }
}

text_newtype!(
    /// A profile image: an absolute http(s) URL of at most 2048 characters.
    ProfileImage
);

impl ProfileImage {
    pub const MAX_LEN: usize = 2048;

    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        if raw.len() > Self::MAX_LEN {
            return Err(FieldError::new(
                field,
                format!("must be at most {} characters", Self::MAX_LEN),
            ));
        }
        // The URL parser would silently drop tabs and newlines; refuse them.
        single_line(field, raw)?;
        let url = url::Url::parse(raw)
            .map_err(|_| FieldError::new(field, "must be an absolute http(s) URL"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(FieldError::new(field, "must be an absolute http(s) URL"));
        }
        Ok(Self(raw.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_numbers_must_be_e164() {
        assert!(PhoneNumber::parse("p", "+62123456789").is_ok());
        assert!(PhoneNumber::parse("p", "+1234567").is_ok());
        assert!(PhoneNumber::parse("p", "+123456789012345").is_ok());
        for bad in [
            "62123456789",
            "+123456",
            "+1234567890123456",
            "+62 123 456",
            "+0123456789",
            "+",
            "",
            "+٣٣٣٣٣٣٣٣",
        ] {
            let err = PhoneNumber::parse("phone_number", bad).unwrap_err();
            assert_eq!(err.field, "phone_number", "{bad}");
        }
        assert_eq!(
            PhoneNumber::parse("p", "+62123456789").unwrap().digits(),
            "62123456789"
        );
    }

    #[test]
    fn message_bodies_are_1_to_4096_characters_not_blank() {
        assert!(MessageBody::parse("message", "Halo!").is_ok());
        assert!(MessageBody::parse("message", &"é".repeat(4096)).is_ok());
        assert!(MessageBody::parse("message", &"a".repeat(4097)).is_err());
        assert!(MessageBody::parse("message", "").is_err());
        assert!(MessageBody::parse("message", " \n\t").is_err());
        assert!(MessageBody::parse("message", "line one\nline two\ttab").is_ok());
        assert!(MessageBody::parse("message", "a\u{0}b").is_err());
        assert!(MessageBody::parse("message", "bell\u{7}").is_err());
    }

    #[test]
    fn status_texts_are_at_most_139_characters() {
        assert!(StatusText::parse("status", "Sedang sibuk dalam rapat.").is_ok());
        assert!(StatusText::parse("status", &"a".repeat(139)).is_ok());
        assert!(StatusText::parse("status", &"a".repeat(140)).is_err());
        assert!(StatusText::parse("status", "  ").is_err());
        assert!(StatusText::parse_initial("status", "").is_ok());
        assert!(StatusText::parse("status", "a\u{0}").is_err());
        assert!(UserName::parse("name", "a\u{0}").is_err());
    }

    #[test]
    fn profile_images_are_absolute_http_urls() {
        assert!(ProfileImage::parse("p", "https://example.com/u/1.jpg").is_ok());
        assert!(ProfileImage::parse("p", "http://example.com").is_ok());
        assert!(ProfileImage::parse("p", "ftp://example.com/x").is_err());
        assert!(ProfileImage::parse("p", "/relative.jpg").is_err());
        assert!(ProfileImage::parse("p", "javascript:alert(1)").is_err());
        assert!(ProfileImage::parse("p", "https://exa\nmple.com/x").is_err());
        assert!(ProfileImage::parse("p", "https://example.com/\u{0}").is_err());
    }

    #[test]
    fn validation_errors_collect_every_field() {
        let mut errors = ValidationErrors::default();
        assert_eq!(errors.require::<u8>("name", None), None);
        assert!(errors.check(UserName::parse("name", "ok")).is_some());
        errors.check(PhoneNumber::parse("phone_number", "nope"));
        let fields: Vec<_> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["name", "phone_number"]);
    }
}
