//! `{{ path }}` templates for authorization headers and base URLs.
//!
//! Deliberately tiny: variables and literal text, no logic. Parsed once at load so
//! that a typo is a config error with a line number, not a 500 at request time.

use std::fmt;

use serde::{Deserialize, Deserializer};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Literal(String),
    /// A dotted context path such as `api_key` or `metadata.instance_url`.
    Var(String),
}

#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed `{{{{` in template")]
    Unclosed,
    #[error("empty `{{{{ }}}}` in template")]
    Empty,
    #[error("invalid variable name {0:?} in template (use letters, digits, `_` and `.`)")]
    BadName(String),
}

impl Template {
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Literal(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or(TemplateError::Unclosed)?;
            let name = after[..end].trim();
            if name.is_empty() {
                return Err(TemplateError::Empty);
            }
            let valid = name
                .split('.')
                .all(|seg| !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
            if !valid {
                return Err(TemplateError::BadName(name.to_owned()));
            }
            parts.push(Part::Var(name.to_owned()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        Ok(Self {
            source: source.to_owned(),
            parts,
        })
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    pub fn vars(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Var(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Renders into `out`, asking `lookup` to append each variable's value.
    /// Returns the first variable that `lookup` could not provide.
    pub fn render_into<'a>(
        &'a self,
        out: &mut String,
        mut lookup: impl FnMut(&str, &mut String) -> bool,
    ) -> Result<(), &'a str> {
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Var(name) => {
                    if !lookup(name, out) {
                        return Err(name);
                    }
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Template({:?})", self.source)
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        Template::parse(&source).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders() {
        let t = Template::parse("Bearer {{ oauth.token.access_token }}!").unwrap();
        assert_eq!(t.vars().collect::<Vec<_>>(), ["oauth.token.access_token"]);
        let mut out = String::new();
        t.render_into(&mut out, |name, out| {
            out.push_str(&name.len().to_string());
            true
        })
        .unwrap();
        assert_eq!(out, "Bearer 24!");
    }

    #[test]
    fn reports_the_missing_variable() {
        let t = Template::parse("{{a}}-{{b}}").unwrap();
        let mut out = String::new();
        assert_eq!(t.render_into(&mut out, |name, _| name == "a"), Err("b"));
    }

    #[test]
    fn rejects_broken_templates() {
        assert_eq!(Template::parse("{{ a"), Err(TemplateError::Unclosed));
        assert_eq!(Template::parse("{{ }}"), Err(TemplateError::Empty));
        assert!(matches!(Template::parse("{{ a b }}"), Err(TemplateError::BadName(_))));
        assert!(matches!(Template::parse("{{ a..b }}"), Err(TemplateError::BadName(_))));
        assert_eq!(
            Template::parse("plain").unwrap().parts(),
            [Part::Literal("plain".into())]
        );
    }
}
