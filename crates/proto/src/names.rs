//! The one naming rule shared by VMs, images and kernels.

/// Longest name: a DNS label (names become `<name>.vm`).
pub const MAX_NAME_LEN: usize = 63;

/// Why a name was refused; the message says what the rule is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// name is empty
    #[error("name is empty")]
    Empty,
    /// name is longer than 63 characters
    #[error("name {0:?} is longer than 63 characters")]
    TooLong(String),
    /// bad character
    #[error("name {name:?} contains {ch:?}: use only lowercase letters a-z, digits and '-'")]
    BadChar { name: String, ch: char },
    /// leading or trailing hyphen
    #[error("name {0:?} must not start or end with '-'")]
    Hyphen(String),
}

/// Checks `name` against the rule: 1-63 chars of `[a-z0-9-]`, no leading or
/// trailing hyphen.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.to_string()));
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(NameError::BadChar {
            name: name.to_string(),
            ch,
        });
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(NameError::Hyphen(name.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_good_names() {
        for n in ["a", "dev-1", "0", &"x".repeat(63)] {
            assert_eq!(validate_name(n), Ok(()), "{n}");
        }
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert!(matches!(
            validate_name(&"x".repeat(64)),
            Err(NameError::TooLong(_))
        ));
        assert!(matches!(
            validate_name("Dev"),
            Err(NameError::BadChar { ch: 'D', .. })
        ));
        assert!(matches!(
            validate_name("a_b"),
            Err(NameError::BadChar { ch: '_', .. })
        ));
        assert!(matches!(
            validate_name("a.b"),
            Err(NameError::BadChar { ch: '.', .. })
        ));
        assert!(matches!(validate_name("-a"), Err(NameError::Hyphen(_))));
        assert!(matches!(validate_name("a-"), Err(NameError::Hyphen(_))));
        assert!(matches!(validate_name("é"), Err(NameError::BadChar { .. })));
    }
}
