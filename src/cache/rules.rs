//! Which reads `[[cache.rules]]` select, and for how long their results may be kept.
//! Pure: the classifier supplies the tables, the session decides what to do with the answer.

use std::time::Duration;

use crate::config::CacheRule;

use super::invalidate::{name_parts, relation_names};

/// The tables a read touches, in the forms the cache needs, worked out once per distinct
/// statement text (the classifier's cache keeps them) instead of on every lookup.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReadTables {
    /// Each table's unquoted, lower-cased name parts, for matching against rules.
    parts: Vec<Vec<String>>,
    /// The relation names generations are kept under ([`relation_names`]).
    relations: Vec<String>,
}

impl ReadTables {
    /// `tables` as the classifier names them.
    pub fn new(tables: &[String]) -> ReadTables {
        ReadTables {
            parts: tables.iter().map(|t| name_parts(t)).collect(),
            relations: relation_names(tables),
        }
    }

    /// Sorted, unique relation names, as [`relation_names`] gives them.
    pub fn relations(&self) -> &[String] {
        &self.relations
    }
}

/// Whether a rule's table name selects a table the statement reads. An unqualified rule
/// (`products`) selects that table in any schema (`products`, `public.products`,
/// `shop.products`); a qualified rule (`shop.products`) selects only names ending in that
/// schema and table. Case-insensitive and quote-aware, like unquoted SQL identifiers: both
/// sides are name parts ([`name_parts`]).
fn selects(rule_table: &[String], table: &[String]) -> bool {
    rule_table.len() <= table.len() && table.ends_with(rule_table)
}

/// How long a read of `tables` may be cached: `Some(ttl)` when every table is selected by some
/// rule, the shortest ttl among the rules that select any of them (a rule without `ttl` uses
/// `default_ttl`); `None` when any table is not selected, or there are no tables.
pub fn rule_ttl(
    rules: &[CacheRule],
    default_ttl: Duration,
    tables: &ReadTables,
) -> Option<Duration> {
    if tables.parts.is_empty() {
        return None;
    }
    let mut shortest: Option<Duration> = None;
    for table in &tables.parts {
        let mut selected = false;
        for rule in rules {
            if rule
                .table_parts()
                .iter()
                .any(|rule_table| selects(rule_table, table))
            {
                selected = true;
                let ttl = rule.ttl.unwrap_or(default_ttl);
                shortest = Some(shortest.map_or(ttl, |s| s.min(ttl)));
            }
        }
        if !selected {
            return None;
        }
    }
    shortest
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Duration = Duration::from_secs(60);

    fn rule(tables: &[&str], ttl: Option<u64>) -> CacheRule {
        CacheRule::new(
            tables.iter().map(|t| (*t).to_owned()).collect(),
            ttl.map(Duration::from_secs),
        )
    }

    fn tables(names: &[&str]) -> ReadTables {
        let names: Vec<String> = names.iter().map(|t| (*t).to_owned()).collect();
        ReadTables::new(&names)
    }

    #[test]
    fn unqualified_rule_selects_the_table_in_any_schema() {
        let rules = [rule(&["products"], None)];
        assert_eq!(
            rule_ttl(&rules, DEFAULT, &tables(&["products"])),
            Some(DEFAULT)
        );
        assert_eq!(
            rule_ttl(&rules, DEFAULT, &tables(&["public.products"])),
            Some(DEFAULT)
        );
        assert_eq!(
            rule_ttl(&rules, DEFAULT, &tables(&["Products"])),
            Some(DEFAULT)
        );
        assert_eq!(
            rule_ttl(&rules, DEFAULT, &tables(&["products_archive"])),
            None
        );
    }

    #[test]
    fn qualified_rule_selects_only_that_schema() {
        let rules = [rule(&["shop.products"], Some(30))];
        let thirty = Some(Duration::from_secs(30));
        assert_eq!(
            rule_ttl(&rules, DEFAULT, &tables(&["shop.products"])),
            thirty
        );
        assert_eq!(
            rule_ttl(&rules, DEFAULT, &tables(&["SHOP.\"products\""])),
            thirty
        );
        assert_eq!(rule_ttl(&rules, DEFAULT, &tables(&["products"])), None);
        assert_eq!(
            rule_ttl(&rules, DEFAULT, &tables(&["public.products"])),
            None
        );
    }

    #[test]
    fn every_table_must_be_selected() {
        let rules = [rule(&["products", "categories"], None)];
        assert_eq!(
            rule_ttl(&rules, DEFAULT, &tables(&["products", "categories"])),
            Some(DEFAULT)
        );
        assert_eq!(
            rule_ttl(&rules, DEFAULT, &tables(&["products", "orders"])),
            None
        );
        assert_eq!(
            rule_ttl(&rules, DEFAULT, &tables(&[])),
            None,
            "no tables: nothing to cache"
        );
        assert_eq!(rule_ttl(&[], DEFAULT, &tables(&["products"])), None);
    }

    #[test]
    fn shortest_ttl_of_the_matching_rules_wins() {
        let rules = [
            rule(&["products"], Some(300)),
            rule(&["categories"], Some(10)),
            rule(&["public.products"], Some(120)),
            rule(&["orders"], Some(1)),
        ];
        assert_eq!(
            rule_ttl(&rules, DEFAULT, &tables(&["products", "categories"])),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            rule_ttl(&rules, DEFAULT, &tables(&["public.products"])),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            rule_ttl(&rules, DEFAULT, &tables(&["shop.products"])),
            Some(Duration::from_secs(300))
        );
        let with_default = [rule(&["products"], Some(300)), rule(&["products"], None)];
        assert_eq!(
            rule_ttl(&with_default, DEFAULT, &tables(&["products"])),
            Some(DEFAULT)
        );
    }
}
