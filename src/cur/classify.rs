//! What a CUR line is, from its text columns alone: the token type in its usage type, how many
//! tokens one pricing unit holds, and which lines are adjustments. Pure; no I/O.

use std::fmt;

use rust_decimal::Decimal;
use serde::Serialize;

/// The token type a Bedrock usage type bills. `Other` covers images, model units and anything
/// that is not counted in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenType {
    Input,
    Output,
    CacheRead,
    CacheWrite,
    Other,
}

impl TokenType {
    pub const TOKENS: [TokenType; 4] =
        [TokenType::Input, TokenType::Output, TokenType::CacheRead, TokenType::CacheWrite];

    pub fn as_str(self) -> &'static str {
        match self {
            TokenType::Input => "input",
            TokenType::Output => "output",
            TokenType::CacheRead => "cache_read",
            TokenType::CacheWrite => "cache_write",
            TokenType::Other => "other",
        }
    }

    /// The usage type's token type. First-party usage types end in `-input-tokens`,
    /// `-output-tokens`, `-cache-read-input-token-count` or `-cache-write-input-token-count`,
    /// possibly followed by a qualifier (`-batch`, `-cross-region-global`, `-flex`);
    /// Marketplace ones say `InputTokenCount`, `OutputTokenCount`, `input_tokens`, …
    pub fn of_usage_type(usage_type: &str) -> TokenType {
        let u = usage_type.to_ascii_lowercase().replace('_', "-");
        if u.contains("cache-read") || u.contains("cachereadinputtoken") {
            TokenType::CacheRead
        } else if u.contains("cache-write") || u.contains("cachewriteinputtoken") {
            TokenType::CacheWrite
        } else if u.contains("input-token") || u.contains("inputtokencount") {
            TokenType::Input
        } else if u.contains("output-token") || u.contains("outputtokencount") {
            TokenType::Output
        } else {
            TokenType::Other
        }
    }
}

impl fmt::Display for TokenType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Marketplace-billed model (older Anthropic models): usage types like
/// `USW2-MP:USW2_InputTokenCount-Units`, quantities in millions of tokens.
pub fn is_marketplace(usage_type: &str) -> bool {
    usage_type.contains("MP:")
}

/// How many tokens one unit of `line_item_usage_amount` is, or `None` when the line is not in
/// tokens (images, model units) or its unit is unknown.
pub fn tokens_per_unit(pricing_unit: &str, usage_type: &str) -> Option<Decimal> {
    if TokenType::of_usage_type(usage_type) == TokenType::Other {
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

    #[test]
    fn only_usage_lines_are_allocated() {
        assert!(is_usage("Usage"));
        for t in ["Credit", "Refund", "Tax", "BundledDiscount", "EdpDiscount", "Fee"] {
            assert!(!is_usage(t), "{t}");
        }
    }
}
