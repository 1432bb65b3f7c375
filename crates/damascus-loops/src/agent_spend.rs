//! What an agent's run cost, as ledger rows: dollars the agent reported are kept as
//! reported; tokens without dollars are priced from the price table
//! (`damascus_core::prices`) under the model the agent named, else the project's
//! `--agent-model`, and the row names the price used. Tokens no price covers are
//! recorded as spend unknown for what was reserved, so a cap never forgets them.
//!
//! Must not touch: the database, the agent's process.

use damascus_core::prices::{FoundPrice, PriceTable};
use damascus_core::{CostEntry, CostSource};

use crate::agents::ModelSpend;

/// How a run's spend is priced.
pub(crate) struct Pricing<'a> {
    pub table: &'a PriceTable,
    /// The model the project names, for usage that names none.
    pub model: Option<&'a str>,
    /// The name a row takes when neither the agent nor the project names a model.
    pub program: &'a str,
}

impl Pricing<'_> {
    fn price(&self, spend: &ModelSpend) -> Option<FoundPrice> {
        // A model the agent names is priced as itself, never as the project's.
        spend
            .model
            .as_deref()
            .or(self.model)
            .and_then(|m| self.table.find(m))
    }

    fn model_name(&self, spend: &ModelSpend) -> String {
        spend
            .model
            .clone()
            .or_else(|| self.model.map(str::to_owned))
            .unwrap_or_else(|| self.program.to_owned())
    }

    /// Dollars so far: reported ones, and priced tokens (unpriced tokens count 0).
    pub fn usd(&self, spend: &[ModelSpend]) -> f64 {
        spend
            .iter()
            .map(|s| match s.usd {
                Some(usd) => usd,
                None => self.price(s).map(|p| p.usd(s.tokens)).unwrap_or(0.0),
            })
            .sum()
    }

    /// The ledger rows of a run that spent `spend`, `reserved` being what it was told
    /// it may spend (when a cap applies).
    pub fn rows(&self, spend: &[ModelSpend], reserved: Option<f64>) -> Vec<CostEntry> {
        spend
            .iter()
            .filter(|s| s.usd.is_some() || s.tokens.total() > 0)
            .map(|s| {
                let model = self.model_name(s);
                let tokens_in = s.tokens.input + s.tokens.cached_input;
                let row = |model: String, usd: f64, price: Option<String>| CostEntry {
                    source: CostSource::Agent,
                    model,
                    tokens_in,
                    tokens_out: s.tokens.output,
                    tokens_cached: s.tokens.cached_input,
                    price,
                    usd,
                };
                match (s.usd, self.price(s)) {
                    (Some(usd), _) => row(model, usd.max(0.0), None),
                    (None, Some(price)) => row(model, price.usd(s.tokens), Some(price.label())),
                    (None, None) => row(
                        format!("{model} (spend unknown: no price for its tokens)"),
                        reserved.unwrap_or(0.0),
                        None,
                    ),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use damascus_core::prices::Tokens;

    fn spend(model: Option<&str>, input: i64, cached: i64, output: i64, usd: Option<f64>) -> ModelSpend {
        ModelSpend {
            model: model.map(str::to_owned),
            tokens: Tokens {
                input,
                cached_input: cached,
                output,
            },
            usd,
        }
    }

    #[test]
    fn reported_dollars_stay_tokens_are_priced_and_unpriced_tokens_are_unknown() {
        let table = PriceTable::built_in();
        let pricing = Pricing {
            table: &table,
            model: Some("gpt-5"),
            program: "codex",
        };
        let run = [
            spend(None, 1_000_000, 2_000_000, 100_000, None),
            spend(Some("claude-sonnet-4-5"), 10, 0, 10, Some(0.5)),
            spend(Some("mystery"), 10, 0, 10, None),
            spend(Some("idle"), 0, 0, 0, None),
        ];
        let rows = pricing.rows(&run, Some(2.0));
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].model, "gpt-5");
        assert_eq!((rows[0].tokens_in, rows[0].tokens_cached), (3_000_000, 2_000_000));
        assert!((rows[0].usd - (1.25 + 0.25 + 1.0)).abs() < 1e-9, "{}", rows[0].usd);
        assert!(rows[0].price.as_deref().unwrap().starts_with("gpt-5 at 1.25/0.125/10"));
        assert_eq!((rows[1].usd, rows[1].price.clone()), (0.5, None));
        assert_eq!(rows[2].model, "mystery (spend unknown: no price for its tokens)");
        assert_eq!(rows[2].usd, 2.0);
        assert!((pricing.usd(&run) - 3.0).abs() < 1e-9);
    }
}
