//! Colour on stderr: only when it is a terminal, and never with `NO_COLOR`
//! set (https://no-color.org: any non-empty value).

use std::io::IsTerminal;

use console::Style;

/// Whether stderr gets colour.
pub fn colour_stderr() -> bool {
    colour_allowed(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

fn colour_allowed(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The styles of stderr's prefixes, plain when colour is off.
pub struct Stderr {
    on: bool,
}

impl Stderr {
    pub fn detect() -> Stderr {
        Stderr {
            on: colour_stderr(),
        }
    }

    fn paint(&self, style: Style, s: &str) -> String {
        style.force_styling(self.on).apply_to(s).to_string()
    }

    pub fn error(&self, s: &str) -> String {
        self.paint(Style::new().red().bold(), s)
    }

    pub fn hint(&self, s: &str) -> String {
        self.paint(Style::new().cyan(), s)
    }

    pub fn warning(&self, s: &str) -> String {
        self.paint(Style::new().yellow(), s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colour_needs_a_terminal_and_no_no_color() {
        assert!(colour_allowed(true, None));
        assert!(colour_allowed(true, Some(OsStr::new(""))));
        assert!(!colour_allowed(true, Some(OsStr::new("1"))));
        assert!(!colour_allowed(false, None));
    }

    #[test]
    fn plain_when_off() {
        let s = Stderr { on: false };
        assert_eq!(s.error("error"), "error");
        let s = Stderr { on: true };
        assert!(s.error("error").contains("\u{1b}["));
    }
}
