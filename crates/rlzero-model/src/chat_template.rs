//! Rendering HF chat templates (Jinja) with minijinja, configured like transformers'
//! `apply_chat_template`: `trim_blocks` and `lstrip_blocks` on, loop controls, `raise_exception`,
//! `strftime_now`, and Python string/dict methods (`.strip()`, `.startswith()`, `.items()`)
//! through minijinja-contrib's `pycompat`.
//!
//! ```
//! use rlzero_model::chat_template::{ChatTemplate, Message};
//! let t = ChatTemplate::new(
//!     "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}",
//!     None, None, "example").unwrap();
//! let s = t.render(&[Message::user("hi")], true).unwrap();
//! assert_eq!(s, "<user>hi<assistant>");
//! ```

use minijinja::{Environment, ErrorKind};
use serde::Serialize;

use crate::error::{ModelError, Result};

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// Who speaks: `system`, `user`, `assistant` (or any role the template knows).
    pub role: String,
    /// The turn's text.
    pub content: String,
}

impl Message {
    /// A turn with any role.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
    /// A `system` turn.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    /// A `user` turn.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    /// An `assistant` turn.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template plus the special-token strings templates refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    source_name: String,
    /// The Jinja source, kept for export (`tokenizer_config.json`'s `chat_template`).
    source: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_name", &self.source_name)
            .finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`; a syntax error is a [`ModelError::ChatTemplate`] naming `source_name`.
    pub fn new(
        source: &str,
        bos_token: Option<String>,
        eos_token: Option<String>,
        source_name: impl Into<String>,
    ) -> Result<Self> {
        let source_name = source_name.into();
        let mut env = Environment::new();
        // transformers: ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |fmt: String| -> String {
            strftime_now(&fmt)
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ModelError::ChatTemplate {
                source_name: source_name.clone(),
                reason: describe(&e),
            })?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
            source_name,
            source: source.to_string(),
        })
    }

    /// The template's Jinja source, as given to [`ChatTemplate::new`].
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`; `add_generation_prompt` appends the assistant header.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let err = |e: minijinja::Error| ModelError::ChatTemplate {
            source_name: self.source_name.clone(),
            reason: describe(&e),
        };
        let tmpl = self.env.get_template("chat").map_err(err)?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
            tools => minijinja::Value::from(()),
        })
        .map_err(err)
    }
}

fn describe(e: &minijinja::Error) -> String {
    match e.line() {
        Some(line) => format!("line {line}: {e}"),
        None => e.to_string(),
    }
}

/// Templates (Llama-3.x) print today's date; supports the `%d %b %Y %Y-%m-%d` subset they use.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    fmt.replace("%Y", &format!("{y:04}"))
        .replace("%m", &format!("{m:02}"))
        .replace("%d", &format!("{d:02}"))
        .replace("%b", MONTHS[(m - 1) as usize])
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_422), (2025, 11, 30));
    }

    #[test]
    fn raise_exception_is_an_error() -> Result<()> {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}", None, None, "t")?;
        let e = t
            .render(&[], false)
            .expect_err("raise_exception must fail")
            .to_string();
        assert!(e.contains("no system role"), "{e}");
        Ok(())
    }

    #[test]
    fn python_methods_work() -> Result<()> {
        let t = ChatTemplate::new("{{ messages[0].content.strip() }}", None, None, "t")?;
        assert_eq!(t.render(&[Message::user("  x ")], false)?, "x");
        Ok(())
    }
}
