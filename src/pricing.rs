//! The price catalog: list prices per model (and per cross-region profile prefix where they
//! differ) and token type, as exact decimals. Pure: loading takes text, never a path.
//!
//! Two formats: tally's own TOML (USD per 1K or 1M tokens, prices written as strings) and
//! LiteLLM's `model_prices_and_context_window.json` (USD per token, read from the JSON number
//! text so no float ever touches a price).
//!
//! Besides the four token types a model may price what Bedrock bills in other units
//! ([`DimensionPrices`]): images, seconds of video and of audio, rerank search units, cache
//! writes with a 1 h TTL, and latency-optimized tokens. Unset, the 1 h cache write costs what
//! the 5 m one does and a latency-optimized token what a standard one does; a unit without a
//! price costs 0. Batch prices every dimension at 50 % of on-demand, as it does tokens by
//! default.

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

/// USD per unit of what a model bills besides its four token types (on-demand).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DimensionPrices {
    /// Per image generated.
    pub image: Decimal,
    /// Per second of video.
    pub video_second: Decimal,
    /// Per second of audio.
    pub audio_second: Decimal,
    /// Per rerank search unit (a query of up to 100 documents).
    pub search_unit: Decimal,
    /// Per token written to the cache with a 1 h TTL.
    pub cache_write_1h: Decimal,
    /// Per input token of a latency-optimized request.
    pub latency_optimized_input: Decimal,
    /// Per output token of a latency-optimized request.
    pub latency_optimized_output: Decimal,
}

impl DimensionPrices {
    /// The defaults for what a catalog leaves unset: the standard token prices.
    fn defaults(on_demand: &TokenPrices) -> DimensionPrices {
        DimensionPrices {
            cache_write_1h: on_demand.cache_write,
            latency_optimized_input: on_demand.input,
            latency_optimized_output: on_demand.output,
            ..DimensionPrices::default()
        }
    }

    fn half(&self) -> DimensionPrices {
        let h = |d: Decimal| d / Decimal::TWO;
        DimensionPrices {
            image: h(self.image),
            video_second: h(self.video_second),
            audio_second: h(self.audio_second),
            search_unit: h(self.search_unit),
            cache_write_1h: h(self.cache_write_1h),
            latency_optimized_input: h(self.latency_optimized_input),
            latency_optimized_output: h(self.latency_optimized_output),
        }
    }
}

/// The prices of one model or profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelPrices {
    pub on_demand: TokenPrices,
    pub batch: TokenPrices,
    /// The other dimensions, on-demand; batch is half of each.
    pub dimensions: DimensionPrices,
}

impl ModelPrices {
    pub fn tier(&self, tier: Tier) -> &TokenPrices {
        match tier {
            Tier::OnDemand => &self.on_demand,
            Tier::Batch => &self.batch,
        }
    }

    /// Every price of one tier, what an estimate needs.
    pub fn priced(&self, tier: Tier) -> Prices {
        let dimensions = match tier {
            Tier::OnDemand => self.dimensions,
            Tier::Batch => self.dimensions.half(),
        };
        Prices { tokens: *self.tier(tier), dimensions }
    }
}

/// The token and dimension prices of one model in one tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prices {
    pub tokens: TokenPrices,
    pub dimensions: DimensionPrices,
}

/// What one request used, in every priced unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quantities {
    /// The token counts; `cache_write` is the total of both TTLs.
    pub tokens: Tokens,
    /// The part of `tokens.cache_write` written with a 1 h TTL.
    pub cache_write_1h: u64,
    pub images: u64,
    pub video_ms: u64,
    pub audio_ms: u64,
    pub search_units: u64,
    /// Input and output tokens are priced at the latency-optimized prices.
    pub latency_optimized: bool,
}

impl Prices {
    /// The exact list-price cost of one request's `q`.
    pub fn cost(&self, q: &Quantities) -> Decimal {
        let d = &self.dimensions;
        let t = &q.tokens;
        let (input, output) = if q.latency_optimized {
            (d.latency_optimized_input, d.latency_optimized_output)
        } else {
            (self.tokens.input, self.tokens.output)
        };
        let hour = q.cache_write_1h.min(t.cache_write);
        let n = Decimal::from;
        let per_second = |price: Decimal, ms: u64| price * n(ms) / Decimal::ONE_THOUSAND;
        input * n(t.input)
            + output * n(t.output)
            + self.tokens.cache_read * n(t.cache_read)
            + self.tokens.cache_write * n(t.cache_write - hour)
            + d.cache_write_1h * n(hour)
            + d.image * n(q.images)
            + per_second(d.video_second, q.video_ms)
            + per_second(d.audio_second, q.audio_ms)
            + d.search_unit * n(q.search_units)
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
    /// Billing name (as [`billing_key`] spells it) → model id: how CUR names a model in its
    /// usage types (`USE1-NovaLite-input-tokens`) and Marketplace product names ("Claude 3
    /// Haiku (Amazon Bedrock Edition)").
    billing: HashMap<String, String>,
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

    /// Adds the entries and billing names of `other` that this catalog does not have
    /// (earlier catalogs win).
    pub fn merge(&mut self, other: Catalog) {
        self.merge_billing_names(&other);
        for (k, v) in other.entries {
            self.entries.entry(k).or_insert(v);
        }
    }

    /// Adds the billing names of `other` that this catalog does not have, and no prices: a
    /// user's price files keep the built-in catalog's names for the models they price.
    pub fn merge_billing_names(&mut self, other: &Catalog) {
        for (k, v) in &other.billing {
            self.billing.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }

    /// The model id a CUR billing name stands for (`NovaLite`, `Claude3.7Sonnet`, `Claude 3
    /// Haiku`), compared without case, spaces, dots, dashes or underscores.
    pub fn model_of_billing_name(&self, name: &str) -> Option<&str> {
        self.billing.get(&billing_key(name)).map(String::as_str)
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
            /// How CUR names the model (usage types, Marketplace product names).
            #[serde(default)]
            billing: Vec<String>,
            input: Option<ExactDecimal>,
            output: Option<ExactDecimal>,
            cache_read: Option<ExactDecimal>,
            cache_write: Option<ExactDecimal>,
            batch_input: Option<ExactDecimal>,
            batch_output: Option<ExactDecimal>,
            batch_cache_read: Option<ExactDecimal>,
            batch_cache_write: Option<ExactDecimal>,
            cache_write_1h: Option<ExactDecimal>,
            latency_optimized_input: Option<ExactDecimal>,
            latency_optimized_output: Option<ExactDecimal>,
            per_image: Option<ExactDecimal>,
            per_video_second: Option<ExactDecimal>,
            per_audio_second: Option<ExactDecimal>,
            per_search_unit: Option<ExactDecimal>,
        }
        let err = |message: String| CatalogError { source_name: source_name.to_string(), message };
        let file: File = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut entries = HashMap::new();
        let mut billing: HashMap<String, String> = HashMap::new();
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
            let per_unit = |f: &str, d: Option<ExactDecimal>| -> Result<Option<Decimal>, CatalogError> {
                d.map(|d| checked_unit_price(d.0).map_err(|why| err(format!("price[{n}].{f}: {why}")))).transpose()
            };
            let unset = DimensionPrices::defaults(&on_demand);
            let dimensions = DimensionPrices {
                image: per_unit("per_image", e.per_image)?.unwrap_or(unset.image),
                video_second: per_unit("per_video_second", e.per_video_second)?.unwrap_or(unset.video_second),
                audio_second: per_unit("per_audio_second", e.per_audio_second)?.unwrap_or(unset.audio_second),
                search_unit: per_unit("per_search_unit", e.per_search_unit)?.unwrap_or(unset.search_unit),
                cache_write_1h: per_token("cache_write_1h", e.cache_write_1h)?.unwrap_or(unset.cache_write_1h),
                latency_optimized_input: per_token("latency_optimized_input", e.latency_optimized_input)?
                    .unwrap_or(unset.latency_optimized_input),
                latency_optimized_output: per_token("latency_optimized_output", e.latency_optimized_output)?
                    .unwrap_or(unset.latency_optimized_output),
            };
            if entries.insert(e.model.clone(), ModelPrices { on_demand, batch, dimensions }).is_some() {
                return Err(err(format!("price[{n}].model: {:?} is listed twice", e.model)));
            }
            for name in &e.billing {
                let key = billing_key(name);
                if key.is_empty() {
                    return Err(err(format!("price[{n}].billing: {name:?} is not a name")));
                }
                match billing.get(&key) {
                    Some(other) if other != &e.model => {
                        return Err(err(format!("price[{n}].billing: {name:?} already names {other:?}")))
                    }
                    _ => billing.insert(key, e.model.clone()),
                };
            }
        }
        Ok(Catalog { entries, billing })
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
            #[serde(borrow, default)]
            cache_creation_input_token_cost_above_1hr: Option<&'a RawValue>,
            #[serde(borrow, default)]
            output_cost_per_image: Option<&'a RawValue>,
            #[serde(borrow, default)]
            input_cost_per_video_per_second: Option<&'a RawValue>,
            #[serde(borrow, default)]
            output_cost_per_video_per_second: Option<&'a RawValue>,
            #[serde(borrow, default)]
            input_cost_per_audio_per_second: Option<&'a RawValue>,
            #[serde(borrow, default)]
            output_cost_per_audio_per_second: Option<&'a RawValue>,
            /// Rerank models: per query, which is what a search unit is.
            #[serde(borrow, default)]
            input_cost_per_query: Option<&'a RawValue>,
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
            let exact = |field: &str, v: Option<&RawValue>, check: fn(Decimal) -> Result<Decimal, String>| {
                v.map(|v| {
                    let d = json_number(v.get())
                        .ok_or_else(|| err(format!("{key}.{field}: not an exact number: {}", v.get())))?;
                    check(d).map_err(|why| err(format!("{key}.{field}: {why}")))
                })
                .transpose()
            };
            let num = |field: &str, v: Option<&RawValue>| exact(field, v, checked_price);
            let unit = |field: &str, v: Option<&RawValue>| exact(field, v, checked_unit_price);
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
            let unset = DimensionPrices::defaults(&on_demand);
            // A model bills seconds of video (or audio) in or out, not both: the one given.
            let either = |a: Option<Decimal>, b: Option<Decimal>| a.or(b).unwrap_or_default();
            let dimensions = DimensionPrices {
                image: unit("output_cost_per_image", e.output_cost_per_image)?.unwrap_or_default(),
                video_second: either(
                    unit("input_cost_per_video_per_second", e.input_cost_per_video_per_second)?,
                    unit("output_cost_per_video_per_second", e.output_cost_per_video_per_second)?,
                ),
                audio_second: either(
                    unit("input_cost_per_audio_per_second", e.input_cost_per_audio_per_second)?,
                    unit("output_cost_per_audio_per_second", e.output_cost_per_audio_per_second)?,
                ),
                search_unit: unit("input_cost_per_query", e.input_cost_per_query)?.unwrap_or_default(),
                cache_write_1h: num(
                    "cache_creation_input_token_cost_above_1hr",
                    e.cache_creation_input_token_cost_above_1hr,
                )?
                .unwrap_or(unset.cache_write_1h),
                ..unset
            };
            entries.insert(key.to_string(), ModelPrices { on_demand, batch, dimensions });
        }
        Ok(Catalog { entries, billing: HashMap::new() })
    }
}

/// The highest price per token a catalog may hold: a million dollars per million tokens, far
/// above any model's, and low enough that no sum of counted tokens can overflow a decimal.
const MAX_PRICE_PER_TOKEN: Decimal = Decimal::ONE;

/// A billing name as the catalog compares it: ASCII letters and digits only, lower case, so
/// `Claude3.7Sonnet`, `Claude 3.7 Sonnet` and `claude-3-7-sonnet` are one name.
pub fn billing_key(name: &str) -> String {
    name.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

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

/// The highest price per unit other than a token (an image, a second, a search unit): far
/// above any model's (cents), and low enough that no sum of counted units can overflow a decimal.
const MAX_PRICE_PER_UNIT: Decimal = Decimal::ONE_THOUSAND;

/// A price per image, second or search unit, refused when negative or absurd.
fn checked_unit_price(d: Decimal) -> Result<Decimal, String> {
    if d.is_sign_negative() && !d.is_zero() {
        Err(format!("a price cannot be negative ({d})"))
    } else if d > MAX_PRICE_PER_UNIT {
        Err(format!("{d} per unit is above the ceiling of {MAX_PRICE_PER_UNIT} per unit"))
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
        assert_eq!(eu.dimensions.cache_write_1h, dec("0.0000022"));
        assert_eq!(eu.dimensions.latency_optimized_input, eu.on_demand.input, "unset: the standard price");
        let dims = |model: &str| c.lookup(&Target::parse(model), None).unwrap().dimensions;
        assert_eq!(dims("amazon.nova-canvas-v1:0").image, dec("0.06"));
        assert_eq!(dims("cohere.rerank-v3-5:0").search_unit, dec("0.002"));
        let marengo = dims("twelvelabs.marengo-embed-2-7-v1:0");
        assert_eq!((marengo.video_second, marengo.audio_second), (dec("0.0007"), dec("0.00014")));
        let sonnet = c.lookup(&Target::parse("anthropic.claude-3-7-sonnet-20250219-v1:0"), None).unwrap();
        assert_eq!(sonnet.dimensions.cache_write_1h, sonnet.on_demand.cache_write, "no 1 h price: the 5 m one");
    }

    /// One request that used every dimension, priced by a catalog that prices each.
    #[test]
    fn every_dimension_is_priced() {
        let c = Catalog::from_toml(
            "[[price]]\nmodel = \"m\"\nper = \"1M\"\ninput = \"1\"\noutput = \"5\"\ncache_read = \"0.1\"\ncache_write = \"1.25\"\n\
             cache_write_1h = \"2\"\nlatency_optimized_input = \"1.5\"\nlatency_optimized_output = \"7\"\n\
             per_image = \"0.04\"\nper_video_second = \"0.08\"\nper_audio_second = \"0.001\"\nper_search_unit = \"0.002\"\n",
            "t",
        )
        .unwrap();
        let m = c.lookup(&Target::parse("m"), None).unwrap();
        let p = m.priced(Tier::OnDemand);
        let tokens = Tokens { input: 1_000_000, output: 1_000_000, cache_read: 1_000_000, cache_write: 1_000_000 };
        let alone = |q: Quantities| p.cost(&q);
        assert_eq!(alone(Quantities { tokens, ..Quantities::default() }), dec("7.35"));
        // 400,000 of the million cache writes were 1 h: 0.6 × 1.25 + 0.4 × 2.
        let hour = Quantities { tokens, cache_write_1h: 400_000, ..Quantities::default() };
        assert_eq!(alone(hour), dec("7.65"));
        assert_eq!(alone(Quantities { tokens, latency_optimized: true, ..Quantities::default() }), dec("9.85"));
        assert_eq!(alone(Quantities { images: 3, ..Quantities::default() }), dec("0.12"));
        assert_eq!(alone(Quantities { video_ms: 6_500, ..Quantities::default() }), dec("0.52"));
        assert_eq!(alone(Quantities { audio_ms: 1_500, ..Quantities::default() }), dec("0.0015"));
        assert_eq!(alone(Quantities { search_units: 3, ..Quantities::default() }), dec("0.006"));
        // The 1 h part is never more than the cache writes it is part of.
        assert_eq!(alone(Quantities { cache_write_1h: 9, ..Quantities::default() }), Decimal::ZERO);
        let batch = m.priced(Tier::Batch);
        assert_eq!(batch.cost(&Quantities { images: 3, video_ms: 1_000, ..Quantities::default() }), dec("0.10"));
        assert_eq!(batch.tokens, m.batch);

        let plain =
            Catalog::from_toml("[[price]]\nmodel = \"m\"\nper = \"1M\"\ninput = \"1\"\ncache_write = \"1.25\"\n", "t")
                .unwrap();
        let p = plain.lookup(&Target::parse("m"), None).unwrap().priced(Tier::OnDemand);
        let hour = Quantities {
            tokens: Tokens { input: 1_000_000, cache_write: 1_000_000, ..Tokens::default() },
            cache_write_1h: 1_000_000,
            latency_optimized: true,
            images: 5,
            ..Quantities::default()
        };
        assert_eq!(p.cost(&hour), dec("2.25"), "unset: 1 h at the 5 m price, latency at the standard one, images free");
    }

    #[test]
    fn unit_prices_are_checked() {
        let bad = |field: &str, value: &str| {
            let text = format!("[[price]]\nmodel = \"m\"\nper = \"1M\"\n{field} = \"{value}\"\n");
            Catalog::from_toml(&text, "prices.toml").unwrap_err().to_string()
        };
        assert!(bad("per_image", "5000").contains("price[0].per_image: 5000 per unit is above the ceiling"));
        assert!(bad("per_search_unit", "-1").contains("price[0].per_search_unit: a price cannot be negative"));
        assert!(bad("cache_write_1h", "2000000").contains("price[0].cache_write_1h"));
        let builtin = Catalog::builtin();
        let haiku = builtin.lookup(&Target::parse("anthropic.claude-haiku-4-5-20251001-v1:0"), None).unwrap();
        assert_eq!(haiku.dimensions.cache_write_1h, dec("0.000002"));
        let reel = builtin.lookup(&Target::parse("amazon.nova-reel-v1:1"), None).unwrap();
        assert_eq!(reel.dimensions.video_second, dec("0.08"));
    }
}
