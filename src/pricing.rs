//! The price catalog: list prices per model (and per cross-region profile prefix where they
//! differ) and token type, as exact decimals. Pure: loading takes text, never a path.
//!
//! Two formats: tally's own TOML (USD per 1K or 1M tokens, prices written as strings) and
//! LiteLLM's `model_prices_and_context_window.json` (USD per token, read from the JSON number
//! text so no float ever touches a price).

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::ids::Target;

/// The built-in catalog, `fixtures/prices.toml`.
pub const BUILTIN_TOML: &str = include_str!("../fixtures/prices.toml");

/// How an invocation is billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Tier {
    #[default]
    OnDemand,
    /// Batch inference: 50% of on-demand unless the catalog gives batch prices.
    Batch,
}

/// USD per token for each token type; a type without a price costs 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenPrices {
    pub input: Decimal,
    pub output: Decimal,
    pub cache_read: Decimal,
    pub cache_write: Decimal,
}

impl TokenPrices {
    fn half(&self) -> TokenPrices {
        let h = |d: Decimal| d / Decimal::TWO;
        TokenPrices {
            input: h(self.input),
            output: h(self.output),
            cache_read: h(self.cache_read),
            cache_write: h(self.cache_write),
        }
    }
}

/// The prices of one model or profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelPrices {
    pub on_demand: TokenPrices,
    pub batch: TokenPrices,
}

impl ModelPrices {
    pub fn tier(&self, tier: Tier) -> &TokenPrices {
        match tier {
            Tier::OnDemand => &self.on_demand,
            Tier::Batch => &self.batch,
        }
    }
}

/// Token counts to price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl TokenPrices {
    /// The exact list-price cost of `tokens`.
    pub fn cost(&self, t: &Tokens) -> Decimal {
        self.input * Decimal::from(t.input)
            + self.output * Decimal::from(t.output)
            + self.cache_read * Decimal::from(t.cache_read)
            + self.cache_write * Decimal::from(t.cache_write)
    }
}

/// `[pricing]`: the price catalogs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricingConfig {
    /// Price files, tried in order: tally's TOML format or LiteLLM's JSON (by extension).
    /// Empty means the built-in catalog.
    #[serde(default)]
    pub catalogs: Vec<PathBuf>,
}

/// A catalog that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct CatalogError {
    pub source_name: String,
    pub message: String,
}

/// Model id (or `prefix.model` for a cross-region profile) → prices.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    entries: HashMap<String, ModelPrices>,
}

impl Catalog {
    pub fn builtin() -> Catalog {
        Catalog::from_toml(BUILTIN_TOML, "built-in catalog").expect("the built-in catalog is valid")
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds the entries of `other` that this catalog does not have (earlier catalogs win).
    pub fn merge(&mut self, other: Catalog) {
        for (k, v) in other.entries {
            self.entries.entry(k).or_insert(v);
        }
    }

    /// The prices for what a `modelId` names; `model_hint` is the model behind an application
    /// profile (from the registry). `None` means the model is unknown (priced at 0, reported).
    pub fn lookup(&self, target: &Target, model_hint: Option<&str>) -> Option<&ModelPrices> {
        match target {
            Target::SystemProfile { prefix, model } => {
                self.entries.get(&format!("{prefix}.{model}")).or_else(|| self.entries.get(model))
            }
            Target::Model { model } => self.entries.get(model),
            Target::ApplicationProfile { .. } | Target::Other { .. } => {
                let hint = model_hint?;
                self.lookup(&Target::parse(hint), None)
            }
        }
    }

    /// Reads tally's TOML format.
    pub fn from_toml(text: &str, source_name: &str) -> Result<Catalog, CatalogError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            price: Vec<Entry>,
        }
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Entry {
            model: String,
            per: String,
            input: Option<ExactDecimal>,
            output: Option<ExactDecimal>,
            cache_read: Option<ExactDecimal>,
            cache_write: Option<ExactDecimal>,
            batch_input: Option<ExactDecimal>,
            batch_output: Option<ExactDecimal>,
            batch_cache_read: Option<ExactDecimal>,
            batch_cache_write: Option<ExactDecimal>,
        }
        let err = |message: String| CatalogError { source_name: source_name.to_string(), message };
        let file: File = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut entries = HashMap::new();
        for (n, e) in file.price.into_iter().enumerate() {
            let divisor = match e.per.as_str() {
                "1K" => Decimal::from(1_000),
                "1M" => Decimal::from(1_000_000),
                _ => return Err(err(format!("price[{n}].per: must be \"1K\" or \"1M\", not {:?}", e.per))),
            };
            let per_token = |f: &str, d: Option<ExactDecimal>| -> Result<Option<Decimal>, CatalogError> {
                d.map(|d| checked_price(d.0 / divisor).map_err(|why| err(format!("price[{n}].{f}: {why}")))).transpose()
            };
            let on_demand = TokenPrices {
                input: per_token("input", e.input)?.unwrap_or_default(),
                output: per_token("output", e.output)?.unwrap_or_default(),
                cache_read: per_token("cache_read", e.cache_read)?.unwrap_or_default(),
                cache_write: per_token("cache_write", e.cache_write)?.unwrap_or_default(),
            };
            let half = on_demand.half();
            let batch = TokenPrices {
                input: per_token("batch_input", e.batch_input)?.unwrap_or(half.input),
                output: per_token("batch_output", e.batch_output)?.unwrap_or(half.output),
                cache_read: per_token("batch_cache_read", e.batch_cache_read)?.unwrap_or(half.cache_read),
                cache_write: per_token("batch_cache_write", e.batch_cache_write)?.unwrap_or(half.cache_write),
            };
            if entries.insert(e.model.clone(), ModelPrices { on_demand, batch }).is_some() {
                return Err(err(format!("price[{n}].model: {:?} is listed twice", e.model)));
            }
        }
        Ok(Catalog { entries })
    }

    /// Reads LiteLLM's JSON rate card, keeping the Bedrock entries keyed by a plain model or
    /// profile id (region-qualified keys such as `bedrock/us-gov-west-1/…` are left out).
    pub fn from_litellm_json(text: &str, source_name: &str) -> Result<Catalog, CatalogError> {
        #[derive(Deserialize)]
        struct Entry<'a> {
            #[serde(borrow, default)]
            litellm_provider: Option<&'a str>,
            #[serde(borrow, default)]
            input_cost_per_token: Option<&'a RawValue>,
            #[serde(borrow, default)]
            output_cost_per_token: Option<&'a RawValue>,
            #[serde(borrow, default)]
            cache_read_input_token_cost: Option<&'a RawValue>,
            #[serde(borrow, default)]
            cache_creation_input_token_cost: Option<&'a RawValue>,
            #[serde(borrow, default)]
            input_cost_per_token_batches: Option<&'a RawValue>,
            #[serde(borrow, default)]
            output_cost_per_token_batches: Option<&'a RawValue>,
        }
        let err = |message: String| CatalogError { source_name: source_name.to_string(), message };
        let all: HashMap<&str, &RawValue> = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut entries = HashMap::new();
        for (key, raw) in all {
            if key.contains('/') {
                continue;
            }
            let Ok(e) = serde_json::from_str::<Entry>(raw.get()) else { continue };
            if !matches!(e.litellm_provider, Some("bedrock" | "bedrock_converse")) {
                continue;
            }
            let num = |field: &str, v: Option<&RawValue>| -> Result<Option<Decimal>, CatalogError> {
                v.map(|v| {
                    let d = json_number(v.get())
                        .ok_or_else(|| err(format!("{key}.{field}: not an exact number: {}", v.get())))?;
                    checked_price(d).map_err(|why| err(format!("{key}.{field}: {why}")))
                })
                .transpose()
            };
            let on_demand = TokenPrices {
                input: num("input_cost_per_token", e.input_cost_per_token)?.unwrap_or_default(),
                output: num("output_cost_per_token", e.output_cost_per_token)?.unwrap_or_default(),
                cache_read: num("cache_read_input_token_cost", e.cache_read_input_token_cost)?.unwrap_or_default(),
                cache_write: num("cache_creation_input_token_cost", e.cache_creation_input_token_cost)?
                    .unwrap_or_default(),
            };
            let half = on_demand.half();
            let batch = TokenPrices {
                input: num("input_cost_per_token_batches", e.input_cost_per_token_batches)?.unwrap_or(half.input),
                output: num("output_cost_per_token_batches", e.output_cost_per_token_batches)?.unwrap_or(half.output),
                ..half
            };
            entries.insert(key.to_string(), ModelPrices { on_demand, batch });
        }
        Ok(Catalog { entries })
    }
}

/// The highest price per token a catalog may hold: a million dollars per million tokens, far
/// above any model's, and low enough that no sum of counted tokens can overflow a decimal.
const MAX_PRICE_PER_TOKEN: Decimal = Decimal::ONE;

/// A price per token, refused when negative or absurd.
fn checked_price(d: Decimal) -> Result<Decimal, String> {
    if d.is_sign_negative() && !d.is_zero() {
        Err(format!("a price cannot be negative ({d})"))
    } else if d > MAX_PRICE_PER_TOKEN {
        Err(format!("{d} per token is above the ceiling of {MAX_PRICE_PER_TOKEN} per token"))
    } else {
        Ok(d)
    }
}

/// A JSON number's text as an exact decimal (`3.5e-08` → 0.000000035).
fn json_number(text: &str) -> Option<Decimal> {
    let t = text.trim();
    if t.contains(['e', 'E']) { Decimal::from_scientific(t).ok() } else { Decimal::from_str(t).ok() }
        .map(|d| d.normalize())
}

/// A price written as a string (`"0.035"`) or an integer; floats are refused so a price is
/// always exactly what was written.
#[derive(Debug, Clone, Copy)]
struct ExactDecimal(Decimal);

impl<'de> Deserialize<'de> for ExactDecimal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Int(i64),
            Float(f64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => Decimal::from_str(s.trim())
                .or_else(|_| Decimal::from_scientific(s.trim()))
                .map(ExactDecimal)
                .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a decimal number"))),
            Raw::Int(i) if i >= 0 => Ok(ExactDecimal(Decimal::from(i))),
            Raw::Int(_) => Err(serde::de::Error::custom("a price cannot be negative")),
            Raw::Float(f) => {
                Err(serde::de::Error::custom(format!("write prices as strings so they stay exact, e.g. \"{f}\"")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn toml_prices_are_exact_per_token() {
        let c = Catalog::from_toml(
            "[[price]]\nmodel = \"amazon.nova-micro-v1:0\"\nper = \"1M\"\ninput = \"0.035\"\noutput = \"0.14\"\ncache_read = \"0.00875\"\n",
            "t",
        )
        .unwrap();
        let p = c.lookup(&Target::parse("amazon.nova-micro-v1:0"), None).unwrap();
        assert_eq!(p.on_demand.cache_read, dec("0.00000000875"));
        assert_eq!(p.batch.input, dec("0.0000000175"));
        let t = Tokens { input: 1_000_000, output: 1_000_000, cache_read: 1_000_000, cache_write: 5 };
        assert_eq!(p.on_demand.cost(&t), dec("0.18375"));
    }

    #[test]
    fn floats_are_refused() {
        let e =
            Catalog::from_toml("[[price]]\nmodel = \"m\"\nper = \"1M\"\ninput = 0.035\n", "prices.toml").unwrap_err();
        assert!(e.to_string().contains("strings"), "{e}");
    }

    #[test]
    fn profile_prefix_prices_fall_back_to_the_model() {
        let c = Catalog::builtin();
        let base = c.lookup(&Target::parse("anthropic.claude-haiku-4-5-20251001-v1:0"), None).unwrap();
        let us = c.lookup(&Target::parse("us.anthropic.claude-haiku-4-5-20251001-v1:0"), None).unwrap();
        let global = c.lookup(&Target::parse("global.anthropic.claude-haiku-4-5-20251001-v1:0"), None).unwrap();
        assert_eq!(us.on_demand.input, dec("0.0000011"));
        assert_eq!(global, base);
        assert!(c.lookup(&Target::parse("acme.unknown-model-v9"), None).is_none());
    }

    #[test]
    fn litellm_file_loads_exactly() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/litellm/model_prices_and_context_window.json");
        let text = std::fs::read_to_string(path).unwrap();
        let c = Catalog::from_litellm_json(&text, path).unwrap();
        assert!(c.len() > 300, "{} bedrock entries", c.len());
        let micro = c.lookup(&Target::parse("amazon.nova-micro-v1:0"), None).unwrap();
        assert_eq!(micro.on_demand.input, dec("0.000000035"));
        assert_eq!(micro.on_demand.cache_read, dec("0.00000000875"));
        assert_eq!(micro.batch.output, dec("0.00000007"));
        let eu = c.lookup(&Target::parse("eu.anthropic.claude-haiku-4-5-20251001-v1:0"), None).unwrap();
        assert_eq!(eu.on_demand.cache_write, dec("0.000001375"));
    }
}
