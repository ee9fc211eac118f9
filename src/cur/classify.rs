//! What a CUR line is, from its text columns alone: its usage type taken apart (region, the
//! model's billing name, the unit, the qualifiers), how many tokens one pricing unit holds,
//! and which lines are adjustments. Pure; no I/O.

use std::fmt;

use rust_decimal::Decimal;
use serde::Serialize;

/// The unit a Bedrock usage line bills: a token type, or images, seconds, search units.
/// `Other` covers model units and anything tally does not meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenType {
    Input,
    Output,
    CacheRead,
    /// Cache writes with the default 5-minute TTL.
    CacheWrite,
    /// Cache writes with a 1-hour TTL (`…-cache-write-input-token-count-1h`).
    CacheWrite1h,
    Image,
    VideoSecond,
    AudioSecond,
    SearchUnit,
    Other,
}

impl TokenType {
    pub const TOKENS: [TokenType; 4] =
        [TokenType::Input, TokenType::Output, TokenType::CacheRead, TokenType::CacheWrite];

    /// Every unit metered by a counter, so allocated by usage.
    pub const METERED: [TokenType; 9] = [
        TokenType::Input,
        TokenType::Output,
        TokenType::CacheRead,
        TokenType::CacheWrite,
        TokenType::CacheWrite1h,
        TokenType::Image,
        TokenType::VideoSecond,
        TokenType::AudioSecond,
        TokenType::SearchUnit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenType::Input => "input",
            TokenType::Output => "output",
            TokenType::CacheRead => "cache_read",
            TokenType::CacheWrite => "cache_write",
            TokenType::CacheWrite1h => "cache_write_1h",
            TokenType::Image => "image",
            TokenType::VideoSecond => "video_second",
            TokenType::AudioSecond => "audio_second",
            TokenType::SearchUnit => "search_unit",
            TokenType::Other => "other",
        }
    }

    /// The usage type's unit (see [`UsageType::parse`]); the pricing unit decides for lines
    /// not in tokens.
    pub fn of_usage_type(usage_type: &str) -> TokenType {
        UsageType::parse(usage_type, "").unit
    }

    /// Whether this is one of the token types.
    pub fn is_tokens(self) -> bool {
        matches!(
            self,
            TokenType::Input
                | TokenType::Output
                | TokenType::CacheRead
                | TokenType::CacheWrite
                | TokenType::CacheWrite1h
        )
    }
}

impl fmt::Display for TokenType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Qualifiers a usage type may carry after (or, for `mantle` and `latency-optimized`, before)
/// its unit, longest first so `cross-region-global` is not read as `cross-region`.
const QUALIFIERS: [&str; 11] = [
    "cross-region-global",
    "cross-region",
    "latency-optimized",
    "custom-model",
    "priority",
    "standard",
    "mantle",
    "batch",
    "flex",
    "global",
    "1h",
];

/// A Bedrock usage type, taken apart: `{region}-{model}-{unit}[-{qualifiers}]` for first-party
/// models (`USE1-Claude4.6Sonnet-output-tokens-cross-region-global`), and for Marketplace
/// ones (`USW2-MP:USW2_InputTokenCount_Global-Units`) the unit and qualifiers, the model
/// coming from the product name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageType {
    /// The billing region code (`USE1`, `EU`, …).
    pub region: String,
    /// The model's billing name (`Claude4.6Sonnet`); empty for Marketplace lines.
    pub model: String,
    pub unit: TokenType,
    /// Qualifiers in the order they appear, lower case (`batch`, `cross-region-global`, `1h`).
    pub qualifiers: Vec<String>,
    pub marketplace: bool,
}

impl UsageType {
    /// Takes `usage_type` apart; `pricing_unit` decides the unit of lines not in tokens
    /// (`image`, seconds, search units). Never fails: what it cannot read is unit `Other`.
    pub fn parse(usage_type: &str, pricing_unit: &str) -> UsageType {
        let (region, rest) = usage_type.split_once('-').unwrap_or(("", usage_type));
        if let Some(mp) = rest.strip_prefix("MP:") {
            return UsageType::marketplace(region, mp);
        }
        const UNITS: [(&str, TokenType); 4] = [
            ("-cache-read-input-token-count", TokenType::CacheRead),
            ("-cache-write-input-token-count", TokenType::CacheWrite),
            ("-input-tokens", TokenType::Input),
            ("-output-tokens", TokenType::Output),
        ];
        let lower = rest.to_ascii_lowercase();
        let found = UNITS.iter().filter_map(|(m, u)| lower.find(m).map(|at| (at, *m, *u))).min_by_key(|f| f.0);
        let (mut model, tail, mut unit) = match found {
            Some((at, marker, unit)) => (&rest[..at], &lower[at + marker.len()..], unit),
            None => {
                // Not tokens: the model is the first part (`TitanImageGeneratorG1-T2I-1024-
                // Standard`), the pricing unit says what is billed.
                let (model, tail) = rest.split_once('-').unwrap_or((rest, ""));
                (model, &lower[lower.len() - tail.len()..], unit_of_pricing(pricing_unit, &lower))
            }
        };
        let mut qualifiers = Vec::new();
        // Qualifiers written before the unit, at the end of the model part.
        loop {
            let lower_model = model.to_ascii_lowercase();
            match QUALIFIERS.iter().find(|q| lower_model.ends_with(&format!("-{q}"))) {
                Some(q) if found.is_some() => {
                    model = &model[..model.len() - q.len() - 1];
                    qualifiers.insert(0, q.to_string());
                }
                _ => break,
            }
        }
        let mut tail = tail.trim_start_matches('-');
        while !tail.is_empty() {
            let q = QUALIFIERS
                .iter()
                .find(|q| tail.starts_with(**q) && tail[q.len()..].chars().next().is_none_or(|c| c == '-'))
                .map(|q| q.to_string())
                .unwrap_or_else(|| tail.split('-').next().unwrap_or(tail).to_string());
            tail = tail[q.len()..].trim_start_matches('-');
            qualifiers.push(q);
        }
        if unit == TokenType::CacheWrite && qualifiers.iter().any(|q| q == "1h") {
            unit = TokenType::CacheWrite1h;
        }
        UsageType { region: region.to_string(), model: model.to_string(), unit, qualifiers, marketplace: false }
    }

    fn marketplace(region: &str, rest: &str) -> UsageType {
        // `USW2_InputTokenCount_Global-Units`, `USW2_input_tokens_standard-Units`,
        // `MillionBatchInputTokens`: words split on `_`, the unit suffix dropped.
        let body = rest.strip_suffix("-Units").unwrap_or(rest);
        let lower = body.to_ascii_lowercase().replace('_', "-");
        let unit = if lower.contains("cacheread") || lower.contains("cache-read") {
            TokenType::CacheRead
        } else if lower.contains("cachewrite") || lower.contains("cache-write") {
            TokenType::CacheWrite
        } else if lower.contains("inputtoken") || lower.contains("input-token") {
            TokenType::Input
        } else if lower.contains("outputtoken") || lower.contains("output-token") {
            TokenType::Output
        } else {
            TokenType::Other
        };
        let mut qualifiers = Vec::new();
        for (needle, q) in [("global", "cross-region-global"), ("batch", "batch"), ("standard", "standard")] {
            if lower.contains(needle) {
                qualifiers.push(q.to_string());
            }
        }
        UsageType { region: region.to_string(), model: String::new(), unit, qualifiers, marketplace: true }
    }

    /// The qualifiers joined with `,` (the `cur` table's `qualifiers` column).
    pub fn qualifier_text(&self) -> String {
        self.qualifiers.join(",")
    }
}

/// The unit of a line not in tokens, from its pricing unit (and usage type for seconds).
fn unit_of_pricing(pricing_unit: &str, lower_usage_type: &str) -> TokenType {
    let unit = pricing_unit.trim().to_ascii_lowercase();
    if unit.starts_with("image") {
        TokenType::Image
    } else if unit.starts_with("second") || unit == "sec" || unit == "secs" {
        if lower_usage_type.contains("audio") || lower_usage_type.contains("speech") {
            TokenType::AudioSecond
        } else {
            TokenType::VideoSecond
        }
    } else if unit.contains("search unit") || lower_usage_type.contains("search-unit") {
        TokenType::SearchUnit
    } else {
        TokenType::Other
    }
}

/// The model a Marketplace product name names: "Claude 3 Haiku (Amazon Bedrock Edition)" →
/// "Claude 3 Haiku".
pub fn marketplace_model_name(product_name: &str) -> &str {
    product_name.split(" (").next().unwrap_or(product_name).trim()
}

/// A Marketplace-billed model (older Anthropic models): usage types like
/// `USW2-MP:USW2_InputTokenCount-Units`, quantities in millions of tokens.
pub fn is_marketplace(usage_type: &str) -> bool {
    usage_type.contains("MP:")
}

/// How many tokens one unit of `line_item_usage_amount` is, or `None` when the line is not in
/// tokens (images, model units) or its unit is unknown.
pub fn tokens_per_unit(pricing_unit: &str, usage_type: &str) -> Option<Decimal> {
    if !TokenType::of_usage_type(usage_type).is_tokens() {
        return None;
    }
    let unit = pricing_unit.trim().to_ascii_lowercase();
    match unit.as_str() {
        "1k tokens" => Some(Decimal::from(1_000)),
        "1m tokens" => Some(Decimal::from(1_000_000)),
        "tokens" | "token" => Some(Decimal::ONE),
        _ if is_marketplace(usage_type) => Some(Decimal::from(1_000_000)),
        _ => None,
    }
}

/// `line_item_line_item_type` values that are usage and so are allocated; everything else
/// (`Credit`, `Refund`, `Tax`, `BundledDiscount`, `EdpDiscount`, fees, …) is an account-level
/// adjustment, reported and never allocated.
pub fn is_usage(line_item_type: &str) -> bool {
    line_item_type == "Usage"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(usage_type: &str, unit: &str, token: TokenType, per_unit: Option<u64>) {
        assert_eq!(TokenType::of_usage_type(usage_type), token, "{usage_type}");
        assert_eq!(tokens_per_unit(unit, usage_type), per_unit.map(Decimal::from), "{usage_type} in {unit:?}");
    }

    #[test]
    fn usage_types_name_their_token_type_and_unit() {
        check("USE1-ClaudeV2-input-tokens", "1K tokens", TokenType::Input, Some(1_000));
        check("USE1-ClaudeV2-output-tokens", "1K tokens", TokenType::Output, Some(1_000));
        check("USE1-Claude4.6Sonnet-cache-read-input-token-count", "1K tokens", TokenType::CacheRead, Some(1_000));
        check(
            "USE1-Claude4Sonnet-cache-write-input-token-count-cross-region-global",
            "1K tokens",
            TokenType::CacheWrite,
            Some(1_000),
        );
        check("USE1-Claude4.6Sonnet-output-tokens-cross-region-global", "1K tokens", TokenType::Output, Some(1_000));
        check("USE1-NovaMicro-input-tokens-batch", "1K tokens", TokenType::Input, Some(1_000));
        check("USE1-Nova2.0Lite-input-tokens-flex", "1K tokens", TokenType::Input, Some(1_000));
        check("USW2-MP:USW2_InputTokenCount-Units", "Units", TokenType::Input, Some(1_000_000));
        check("USW2-MP:USW2_OutputTokenCount_Global-Units", "", TokenType::Output, Some(1_000_000));
        check("USW2-MP:USW2_input_tokens_standard-Units", "Units", TokenType::Input, Some(1_000_000));
        check("USE1-TitanImageGeneratorG1-T2I-1024-Standard", "image", TokenType::Other, None);
        check("USE1-ClaudeV2-input-tokens", "Hrs", TokenType::Input, None);
    }

    fn parsed(usage_type: &str, unit: &str) -> (String, String, TokenType, String, bool) {
        let u = UsageType::parse(usage_type, unit);
        (u.region.clone(), u.model.clone(), u.unit, u.qualifier_text(), u.marketplace)
    }

    /// One real shape per usage-type family (research-formats §2.3: AWS's documentation, the
    /// workshop's real CUR, price-list names): region, model, unit and qualifiers.
    #[test]
    fn usage_types_come_apart_into_region_model_unit_and_qualifiers() {
        // (usage type, pricing unit, (region, model, unit, qualifiers, Marketplace))
        type Case<'a> = (&'a str, &'a str, (&'a str, &'a str, TokenType, &'a str, bool));
        let cases: [Case; 17] = [
            ("USE1-NovaLite-input-tokens", "1K tokens", ("USE1", "NovaLite", TokenType::Input, "", false)),
            (
                "USE1-Claude4.6Sonnet-output-tokens-cross-region-global",
                "1K tokens",
                ("USE1", "Claude4.6Sonnet", TokenType::Output, "cross-region-global", false),
            ),
            (
                "USE1-Claude4.6Sonnet-cache-read-input-token-count",
                "1K tokens",
                ("USE1", "Claude4.6Sonnet", TokenType::CacheRead, "", false),
            ),
            (
                "USE1-Claude4Sonnet-cache-write-input-token-count-1h",
                "1K tokens",
                ("USE1", "Claude4Sonnet", TokenType::CacheWrite1h, "1h", false),
            ),
            (
                "USE1-Claude4Sonnet-cache-write-input-token-count-1h-cross-region-global",
                "1K tokens",
                ("USE1", "Claude4Sonnet", TokenType::CacheWrite1h, "1h,cross-region-global", false),
            ),
            ("USE1-NovaMicro-input-tokens-batch", "1K tokens", ("USE1", "NovaMicro", TokenType::Input, "batch", false)),
            (
                "USE1-Nova2.0Lite-input-tokens-flex",
                "1K tokens",
                ("USE1", "Nova2.0Lite", TokenType::Input, "flex", false),
            ),
            (
                "USE1-gpt-oss-120b-output-tokens-priority",
                "1K tokens",
                ("USE1", "gpt-oss-120b", TokenType::Output, "priority", false),
            ),
            (
                "USE1-openai.gpt-oss-120b-mantle-input-tokens-standard",
                "1K tokens",
                ("USE1", "openai.gpt-oss-120b", TokenType::Input, "mantle,standard", false),
            ),
            (
                "USE2-Llama3.1-405B-Instruct-latency-optimized-output-tokens",
                "1K tokens",
                ("USE2", "Llama3.1-405B-Instruct", TokenType::Output, "latency-optimized", false),
            ),
            (
                "USW2-TitanTextG1-Express-input-tokens",
                "1K tokens",
                ("USW2", "TitanTextG1-Express", TokenType::Input, "", false),
            ),
            (
                "USE1-TitanImageGeneratorG1-T2I-1024-Standard",
                "image",
                ("USE1", "TitanImageGeneratorG1", TokenType::Image, "t2i,1024,standard", false),
            ),
            (
                "USE1-NovaReel-video-seconds",
                "Seconds",
                ("USE1", "NovaReel", TokenType::VideoSecond, "video,seconds", false),
            ),
            ("USW2-MP:USW2_InputTokenCount-Units", "Units", ("USW2", "", TokenType::Input, "", true)),
            (
                "USW2-MP:USW2_OutputTokenCount_Global-Units",
                "",
                ("USW2", "", TokenType::Output, "cross-region-global", true),
            ),
            ("USW2-MP:USW2_input_tokens_standard-Units", "Units", ("USW2", "", TokenType::Input, "standard", true)),
            ("USE1-MP:MillionBatchInputTokens", "", ("USE1", "", TokenType::Input, "batch", true)),
        ];
        for (usage_type, unit, want) in cases {
            let (r, m, u, q, mp) = parsed(usage_type, unit);
            assert_eq!((r.as_str(), m.as_str(), u, q.as_str(), mp), want, "{usage_type}");
        }
        assert_eq!(marketplace_model_name("Claude 3 Haiku (Amazon Bedrock Edition)"), "Claude 3 Haiku");
    }

    #[test]
    fn only_usage_lines_are_allocated() {
        assert!(is_usage("Usage"));
        for t in ["Credit", "Refund", "Tax", "BundledDiscount", "EdpDiscount", "Fee"] {
            assert!(!is_usage(t), "{t}");
        }
    }
}
