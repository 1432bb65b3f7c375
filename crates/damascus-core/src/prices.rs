//! What a model's tokens cost, for agents that report tokens but no dollars: the price
//! table kept in the repository (`data/prices.toml`, built into the binary) with the
//! deployment's overrides on top, and the dollars a run's tokens come to. Every priced
//! ledger row names the price it used (`Price::label`), so a figure can be checked.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The table in the repository.
const BUILT_IN: &str = include_str!("../../../data/prices.toml");

/// One model's price in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub cached_input: f64,
    pub output: f64,
}

/// Where a price came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PriceSource {
    /// `data/prices.toml`, as of its date.
    Table,
    /// The deployment's `--agent-price` or `[agent_prices]`.
    Override,
}

/// A price found for a model: under which table name, from where.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundPrice {
    pub model: String,
    pub price: Price,
    pub source: PriceSource,
    /// The table's `as_of` date, for a table price.
    pub as_of: Option<String>,
}

/// Tokens of one model in one run. `input` excludes `cached_input`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub input: i64,
    pub cached_input: i64,
    pub output: i64,
}

impl Tokens {
    pub fn total(&self) -> i64 {
        self.input + self.cached_input + self.output
    }
}

impl FoundPrice {
    /// What `tokens` cost at this price, in USD.
    pub fn usd(&self, tokens: Tokens) -> f64 {
        let per = |count: i64, usd_per_million: f64| count.max(0) as f64 * usd_per_million / 1e6;
        per(tokens.input, self.price.input)
            + per(tokens.cached_input, self.price.cached_input)
            + per(tokens.output, self.price.output)
    }

    /// The price as a ledger row names it: `gpt-5 at 1.25/0.125/10 USD per Mtok
    /// (in/cached/out; data/prices.toml as of 2026-12-01)`.
    pub fn label(&self) -> String {
        let from = match (self.source, &self.as_of) {
            (PriceSource::Override, _) => "the deployment's --agent-price".to_owned(),
            (PriceSource::Table, Some(date)) => format!("data/prices.toml as of {date}"),
            (PriceSource::Table, None) => "data/prices.toml".to_owned(),
        };
        format!(
            "{} at {}/{}/{} USD per Mtok (in/cached/out; {from})",
            self.model, self.price.input, self.price.cached_input, self.price.output
        )
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    as_of: Option<String>,
    models: BTreeMap<String, Price>,
}

/// The price table a process prices with.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable {
    as_of: Option<String>,
    table: BTreeMap<String, Price>,
    overrides: BTreeMap<String, Price>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriceError {
    #[error("agent price {0:?} is not MODEL=INPUT/CACHED/OUTPUT in USD per million tokens (e.g. gpt-5=1.25/0.125/10)")]
    BadOverride(String),
}

impl PriceTable {
    /// The table in the repository, without overrides.
    pub fn built_in() -> PriceTable {
        let file: TableFile =
            toml::from_str(BUILT_IN).expect("data/prices.toml is checked by a unit test");
        PriceTable {
            as_of: file.as_of,
            table: file.models,
            overrides: BTreeMap::new(),
        }
    }

    /// The built-in table with the deployment's overrides, each `MODEL=IN/CACHED/OUT`.
    pub fn with_overrides(entries: &[String]) -> Result<PriceTable, PriceError> {
        let mut table = PriceTable::built_in();
        for entry in entries.iter().filter(|e| !e.trim().is_empty()) {
            let (model, price) = parse_override(entry)?;
            table.overrides.insert(model, price);
        }
        Ok(table)
    }

    /// Adds or replaces one model's price (the deployment's).
    pub fn set(&mut self, model: &str, price: Price) {
        self.overrides.insert(model.to_owned(), price);
    }

    /// The price of `model`: an override first, then the table; each tried with the
    /// whole name, without a `provider/` prefix, and without a trailing `-YYYYMMDD`.
    pub fn find(&self, model: &str) -> Option<FoundPrice> {
        let model = model.trim();
        let bare = model.rsplit_once('/').map(|(_, m)| m).unwrap_or(model);
        let undated = strip_date(bare);
        for name in [model, bare, undated] {
            if let Some(price) = self.overrides.get(name) {
                return Some(FoundPrice {
                    model: name.to_owned(),
                    price: *price,
                    source: PriceSource::Override,
                    as_of: None,
                });
            }
        }
        for name in [model, bare, undated] {
            if let Some(price) = self.table.get(name) {
                return Some(FoundPrice {
                    model: name.to_owned(),
                    price: *price,
                    source: PriceSource::Table,
                    as_of: self.as_of.clone(),
                });
            }
        }
        None
    }

    /// The models the deployment priced (`--agent-price`), by name.
    pub fn overridden(&self) -> Vec<String> {
        self.overrides.keys().cloned().collect()
    }

    /// Every model priced, overrides included, by name.
    pub fn models(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .table
            .keys()
            .chain(self.overrides.keys())
            .cloned()
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

/// `claude-sonnet-4-5-20250929` → `claude-sonnet-4-5`.
fn strip_date(model: &str) -> &str {
    match model.rsplit_once('-') {
        Some((head, date)) if date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit()) => head,
        _ => model,
    }
}

fn parse_override(entry: &str) -> Result<(String, Price), PriceError> {
    let bad = || PriceError::BadOverride(entry.to_owned());
    let (model, prices) = entry.split_once('=').ok_or_else(bad)?;
    let figures: Vec<f64> = prices
        .split('/')
        .map(|f| f.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let model = model.trim();
    if model.is_empty() || figures.iter().any(|f| !f.is_finite() || *f < 0.0) {
        return Err(bad());
    }
    let price = match figures[..] {
        [input, cached_input, output] => Price {
            input,
            cached_input,
            output,
        },
        _ => return Err(bad()),
    };
    Ok((model.to_owned(), price))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_table_parses_and_prices_a_run() {
        let table = PriceTable::built_in();
        assert!(table.models().len() >= 10);
        let gpt5 = table.find("gpt-5").unwrap();
        let usd = gpt5.usd(Tokens {
            input: 1_000_000,
            cached_input: 1_000_000,
            output: 100_000,
        });
        assert!((usd - (1.25 + 0.125 + 1.0)).abs() < 1e-9, "{usd}");
        assert!(gpt5
            .label()
            .starts_with("gpt-5 at 1.25/0.125/10 USD per Mtok"));
        assert!(gpt5.label().contains("data/prices.toml as of"));
    }

    #[test]
    fn names_are_matched_whole_then_without_provider_then_without_date() {
        let table = PriceTable::built_in();
        assert_eq!(table.find("openai/gpt-5").unwrap().model, "gpt-5");
        assert_eq!(
            table.find("claude-sonnet-4-5-20250929").unwrap().model,
            "claude-sonnet-4-5"
        );
        assert_eq!(table.find("no-such-model"), None);
    }

    #[test]
    fn overrides_win_and_bad_ones_are_refused_with_the_form() {
        let table =
            PriceTable::with_overrides(&["gpt-5=2/0.5/20".into(), "local-coder=0/0/0".into()])
                .unwrap();
        let found = table.find("gpt-5").unwrap();
        assert_eq!(
            (found.source, found.price.output),
            (PriceSource::Override, 20.0)
        );
        assert!(found.label().contains("--agent-price"));
        assert_eq!(table.find("local-coder").unwrap().price.input, 0.0);
        for bad in [
            "gpt-5",
            "gpt-5=1/2",
            "=1/2/3",
            "gpt-5=a/b/c",
            "gpt-5=-1/0/0",
        ] {
            let e = PriceTable::with_overrides(&[bad.into()]).unwrap_err();
            assert!(e.to_string().contains("MODEL=INPUT/CACHED/OUTPUT"), "{e}");
        }
    }
}
