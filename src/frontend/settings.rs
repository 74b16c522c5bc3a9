//! Session settings a client asked for (startup parameters, and changes the server reported
//! while the client used it), and the SQL that makes a pooled server connection match them.
//!
//! In transaction pooling a client's next transaction may run on a connection another client
//! used last; these settings are what make that invisible.

use crate::backend::SettingValues;
use crate::protocol::build::{quote_ident, quote_literal};

/// Startup parameters that are not settings: they pick the role, database or protocol.
const NOT_SETTINGS: &[&str] = &["user", "database", "replication", "options"];

/// Settings the server reports through ParameterStatus when they change; pgrelay follows them so
/// a client's `SET` of one survives a move to another server connection.
const REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "intervalstyle",
    "timezone",
    "search_path",
];

/// The client's wanted settings: names lower-cased (GUC names are case-insensitive), values
/// as SQL text ready for `SET name = <value>` (a quoted literal, or what the client wrote in
/// its own `SET`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    values: SettingValues,
}

impl Settings {
    /// Settings from a startup packet: every parameter except user/database/replication, plus
    /// `-c name=value` / `--name=value` pairs from `options`.
    pub fn from_startup(params: &[(String, String)]) -> Settings {
        let mut s = Settings::default();
        for (name, value) in params {
            let lower = name.to_ascii_lowercase();
            if lower == "options" {
                for (k, v) in parse_options(value) {
                    s.set_sql(&k, &quote_literal(&v));
                }
            } else if !NOT_SETTINGS.contains(&lower.as_str()) && !lower.starts_with("_pq_.") {
                s.set_sql(&lower, &quote_literal(value));
            }
        }
        s
    }

    /// Records `SET name = <sql>`, the value as SQL text.
    pub fn set_sql(&mut self, name: &str, sql: &str) {
        self.values
            .insert(name.to_ascii_lowercase(), sql.to_owned());
    }

    /// Forgets a setting (after `RESET name`): the server default applies again.
    pub fn remove(&mut self, name: &str) {
        self.values.remove(&name.to_ascii_lowercase());
    }

    /// The value of a setting as SQL text.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .as_slice()
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values
            .as_slice()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Every setting as (name, value), sorted by name.
    pub fn as_slice(&self) -> &[(String, String)] {
        self.values.as_slice()
    }

    /// Records a ParameterStatus the server sent while this client used it, if it is a setting
    /// pgrelay follows. Returns whether it was recorded.
    pub fn follow_report(&mut self, name: &str, value: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        if REPORTED.contains(&lower.as_str()) {
            self.set_sql(&lower, &quote_literal(value));
            true
        } else {
            false
        }
    }

    /// The SQL that turns a connection whose pgrelay-applied settings are `applied` into one
    /// with these settings, or None when they already match. Also updates `applied`.
    pub fn sync_sql(&self, applied: &mut SettingValues) -> Option<String> {
        // Both sorted by name: the common case, nothing to do, is one comparison.
        if *applied == self.values {
            return None;
        }
        let mut statements = Vec::new();
        for (name, value) in self.values.as_slice() {
            if applied.get(name) != Some(value.as_str()) {
                statements.push(format!("SET {} = {}", quote_ident(name), value));
            }
        }
        for (name, _) in applied.as_slice() {
            if self.values.get(name).is_none() {
                statements.push(format!("RESET {}", quote_ident(name)));
            }
        }
        applied.replace(self.values.as_slice());
        if statements.is_empty() {
            return None;
        }
        Some(statements.join("; "))
    }
}

/// Parses libpq's `options` value: `-c name=value`, `-cname=value`, `--name=value`, with
/// backslash-escaped spaces.
fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            c if c.is_whitespace() => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    let mut out = Vec::new();
    let mut iter = words.into_iter();
    while let Some(word) = iter.next() {
        let pair = if word == "-c" {
            iter.next()
        } else if let Some(rest) = word.strip_prefix("--") {
            Some(rest.to_owned())
        } else {
            word.strip_prefix("-c").map(str::to_owned)
        };
        if let Some((k, v)) = pair.as_deref().and_then(|p| p.split_once('=')) {
            out.push((k.replace('-', "_").to_ascii_lowercase(), v.to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn startup_parameters_become_settings() {
        let s = Settings::from_startup(&params(&[
            ("user", "app"),
            ("database", "db"),
            ("application_name", "psql"),
            ("DateStyle", "ISO"),
            (
                "options",
                "-c search_path=app,public --statement-timeout=5s -cwork_mem=64MB",
            ),
        ]));
        assert_eq!(s.get("application_name"), Some("'psql'"));
        assert_eq!(s.get("datestyle"), Some("'ISO'"));
        assert_eq!(s.get("search_path"), Some("'app,public'"));
        assert_eq!(s.get("statement_timeout"), Some("'5s'"));
        assert_eq!(s.get("work_mem"), Some("'64MB'"));
        assert_eq!(s.get("user"), None);
    }

    #[test]
    fn sync_sets_what_differs_and_resets_what_another_client_left() {
        let mut s = Settings::default();
        s.set_sql("TimeZone", "'UTC'");
        s.set_sql("application_name", "'a'");
        let mut applied = SettingValues::default();
        applied.insert("application_name".to_string(), "'a'".to_string());
        applied.insert("search_path".to_string(), "other".to_string());
        assert_eq!(
            s.sync_sql(&mut applied).as_deref(),
            Some("SET timezone = 'UTC'; RESET search_path")
        );
        assert_eq!(
            s.sync_sql(&mut applied),
            None,
            "second sync finds nothing to do"
        );
    }

    #[test]
    fn a_connection_with_the_same_settings_needs_nothing_and_another_clients_change_is_undone() {
        let mut s = Settings::default();
        s.set_sql("timezone", "'UTC'");
        s.set_sql("application_name", "'a'");
        let mut applied = SettingValues::default();
        assert_eq!(
            s.sync_sql(&mut applied).as_deref(),
            Some("SET application_name = 'a'; SET timezone = 'UTC'")
        );
        assert_eq!(applied.as_slice(), s.as_slice());
        assert_eq!(s.clone().sync_sql(&mut applied), None);
        // Another client's SET on this connection is set back.
        applied.insert("timezone".to_string(), "'Asia/Tokyo'".to_string());
        assert_eq!(
            s.sync_sql(&mut applied).as_deref(),
            Some("SET timezone = 'UTC'")
        );
        applied.remove("application_name");
        applied.insert("work_mem".to_string(), "'1MB'".to_string());
        assert_eq!(
            s.sync_sql(&mut applied).as_deref(),
            Some("SET application_name = 'a'; RESET work_mem")
        );
        assert_eq!(applied.get("work_mem"), None);
    }

    #[test]
    fn settings_are_kept_sorted_by_name() {
        let mut s = Settings::default();
        for name in ["TimeZone", "application_name", "search_path", "DateStyle"] {
            s.set_sql(name, "'x'");
        }
        s.set_sql("timezone", "'UTC'");
        s.remove("search_path");
        let names: Vec<&str> = s.as_slice().iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["application_name", "datestyle", "timezone"]);
        assert_eq!(s.get("TimeZone"), Some("'UTC'"));
    }

    #[test]
    fn only_followed_reports_are_recorded() {
        let mut s = Settings::default();
        assert!(s.follow_report("TimeZone", "Europe/Paris"));
        assert!(!s.follow_report("is_superuser", "on"));
        assert_eq!(s.get("timezone"), Some("'Europe/Paris'"));
    }

    #[test]
    fn values_are_quoted_for_replay() {
        let s = Settings::from_startup(&params(&[("application_name", "it's")]));
        let mut applied = SettingValues::default();
        assert_eq!(
            s.sync_sql(&mut applied).as_deref(),
            Some("SET application_name = 'it''s'")
        );
        let mut sql = Settings::default();
        sql.set_sql("search_path", "app, public");
        let mut applied = SettingValues::default();
        assert_eq!(
            sql.sync_sql(&mut applied).as_deref(),
            Some("SET search_path = app, public")
        );
        sql.remove("search_path");
        assert_eq!(
            sql.sync_sql(&mut applied).as_deref(),
            Some("RESET search_path")
        );
    }
}
