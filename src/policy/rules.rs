//! Content rules from the policy file (`POLICY_FILE`, TOML or JSON by extension): a maximum
//! text size and deny patterns (regular expressions) with action `reject` or `mask`, plus
//! optional per-app overrides. Validated completely at start (a bad file is a configuration
//! error, exit 2) and on every SIGHUP reload (a bad file then keeps the rules in force).
//! Example: `deploy/policy.example.toml`.

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("POLICY_FILE {path}: {msg}")]
pub struct PolicyError {
    pub path: PathBuf,
    pub msg: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    max_text_bytes: Option<usize>,
    #[serde(default)]
    deny: Vec<RawDeny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    max_text_bytes: Option<usize>,
    #[serde(default)]
    deny: Vec<RawDeny>,
    #[serde(default)]
    apps: HashMap<String, RawRules>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeny {
    pattern: String,
    action: Action,
    replacement: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Refuse the message; the sender is told (`content_rejected`).
    Reject,
    /// Replace the matched text and deliver.
    Mask,
}

/// What the rules say about a text.
#[derive(Debug, PartialEq, Eq)]
pub enum Judgement {
    Pass,
    Reject(String),
    Mask(String),
}

struct Deny {
    regex: Regex,
    action: Action,
    replacement: String,
}

/// One compiled rule set.
pub struct Rules {
    max_text_bytes: Option<usize>,
    /// All patterns at once: one pass over the text tells which (if any) match.
    set: RegexSet,
    deny: Vec<Deny>,
}

/// Patterns are compiled with a size limit so a pathological pattern is a load error, not a
/// memory blow-up; the regex crate's matching is linear in the text, so no pattern can stall
/// the consumer.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl Rules {
    fn compile(raw: RawRules) -> Result<Rules, String> {
        let mut deny = Vec::with_capacity(raw.deny.len());
        for (i, d) in raw.deny.iter().enumerate() {
            let regex = RegexBuilder::new(&d.pattern)
                .size_limit(REGEX_SIZE_LIMIT)
                .build()
                .map_err(|e| format!("deny[{i}] pattern {:?}: {e}", d.pattern))?;
            let replacement = match (d.action, &d.replacement) {
                (Action::Reject, Some(_)) => {
                    return Err(format!("deny[{i}]: replacement only goes with action = \"mask\""))
                }
                (_, r) => r.clone().unwrap_or_else(|| "***".into()),
            };
            deny.push(Deny {
                regex,
                action: d.action,
                replacement,
            });
        }
        let set = RegexSetBuilder::new(raw.deny.iter().map(|d| d.pattern.as_str()))
            .size_limit(REGEX_SIZE_LIMIT * raw.deny.len().max(1))
            .build()
            .map_err(|e| format!("deny patterns: {e}"))?;
        if raw.max_text_bytes == Some(0) {
            return Err("max_text_bytes must be at least 1".into());
        }
        Ok(Rules {
            max_text_bytes: raw.max_text_bytes,
            set,
            deny,
        })
    }

    pub fn judge(&self, text: &str) -> Judgement {
        if let Some(max) = self.max_text_bytes {
            if text.len() > max {
                return Judgement::Reject(format!("text longer than {max} bytes"));
            }
        }
        let matched = self.set.matches(text);
        if !matched.matched_any() {
            return Judgement::Pass;
        }
        if matched.iter().any(|i| self.deny[i].action == Action::Reject) {
            return Judgement::Reject("text matches a denied pattern".into());
        }
        let mut masked = text.to_owned();
        for i in matched.iter() {
            let d = &self.deny[i];
            masked = d
                .regex
                .replace_all(&masked, regex::NoExpand(&d.replacement))
                .into_owned();
        }
        Judgement::Mask(masked)
    }
}

/// The whole policy: default rules, and per-app rule sets that replace them for that app.
pub struct Policy {
    default: Rules,
    apps: HashMap<String, Rules>,
    pub patterns: usize,
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        // One line: a configuration error is printed as one line (regex errors span several).
        let err = |msg: String| PolicyError {
            path: path.to_path_buf(),
            msg: msg.split_whitespace().collect::<Vec<_>>().join(" "),
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let raw: RawPolicy = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => toml::from_str(&text).map_err(|e| err(e.to_string()))?,
            Some("json") => serde_json::from_str(&text).map_err(|e| err(e.to_string()))?,
            _ => return Err(err("must end in .toml or .json".into())),
        };
        Self::compile(raw).map_err(err)
    }

    fn compile(raw: RawPolicy) -> Result<Policy, String> {
        let mut patterns = raw.deny.len();
        let default = Rules::compile(RawRules {
            max_text_bytes: raw.max_text_bytes,
            deny: raw.deny,
        })?;
        let mut apps = HashMap::new();
        for (app, rules) in raw.apps {
            patterns += rules.deny.len();
            apps.insert(
                app.clone(),
                Rules::compile(rules).map_err(|e| format!("apps.{app}: {e}"))?,
            );
        }
        Ok(Policy {
            default,
            apps,
            patterns,
        })
    }

    #[cfg(test)]
    pub(crate) fn compile_toml(text: &str) -> Result<Policy, String> {
        Self::compile(toml::from_str(text).map_err(|e| e.to_string())?)
    }

    pub fn rules(&self, app: &str) -> &Rules {
        self.apps.get(app).unwrap_or(&self.default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml_text: &str) -> Result<Policy, String> {
        Policy::compile_toml(toml_text)
    }

    const EXAMPLE: &str = include_str!("../../deploy/policy.example.toml");

    #[test]
    fn the_example_file_loads() {
        let p = policy(EXAMPLE).unwrap();
        assert!(p.patterns >= 2);
    }

    #[test]
    fn judge() {
        let p = policy(
            r#"
            max_text_bytes = 20
            [[deny]]
            pattern = "(?i)spam"
            action = "reject"
            [[deny]]
            pattern = "\\d{4}"
            action = "mask"
            replacement = "XXXX"
            [apps.loose]
            deny = []
            "#,
        )
        .unwrap();
        let r = p.rules("tilechat");
        assert_eq!(r.judge("hello"), Judgement::Pass);
        assert_eq!(r.judge("pin 1234 or 5678"), Judgement::Mask("pin XXXX or XXXX".into()));
        assert!(matches!(r.judge("SPAM 1234"), Judgement::Reject(_)));
        assert!(matches!(r.judge(&"x".repeat(21)), Judgement::Reject(_)));
        // The per-app override replaces the default rules.
        assert_eq!(p.rules("loose").judge("spam 1234"), Judgement::Pass);
    }

    #[test]
    fn bad_policies_say_what_is_wrong() {
        for (text, want) in [
            ("[[deny]]\npattern = \"(\"\naction = \"reject\"", "deny[0] pattern"),
            ("[[deny]]\npattern = \"a\"\naction = \"explode\"", "unknown variant"),
            ("max_text_bytes = 0", "at least 1"),
            ("colour = 1", "unknown field"),
            (
                "[[deny]]\npattern = \"a\"\naction = \"reject\"\nreplacement = \"x\"",
                "replacement",
            ),
        ] {
            let e = policy(text).err().unwrap_or_default();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
