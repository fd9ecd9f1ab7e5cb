//! Cost estimates: a pricing table (USD per million tokens) and model-name matching.
//!
//! Part of the exchange step. The table ships as `rules/pricing.toml`, compiled in with
//! `include_str!` so a fresh install prices the main models; an operator file in the same
//! format is merged over it (entry by entry), so a negotiated rate or a new model needs no
//! release. Unknown models cost `None`, never 0: a fake zero would hide spend in dashboards.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::exchange::model::Usage;

/// The built-in table.
const BUILTIN: &str = include_str!("../../rules/pricing.toml");

/// Prices of one model, USD per million tokens.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Uncached input tokens.
    pub input: f64,
    /// Output tokens (reasoning included).
    pub output: f64,
    /// Input tokens read from the prompt cache; the input price when absent.
    #[serde(default)]
    pub cached_input: Option<f64>,
    /// Input tokens written to the prompt cache; the input price when absent.
    #[serde(default)]
    pub cache_write: Option<f64>,
    /// Audio input tokens (Realtime and audio models); the input price when absent.
    #[serde(default)]
    pub audio_input: Option<f64>,
    /// Audio input tokens read from the prompt cache; the cached input price when absent.
    #[serde(default)]
    pub cached_audio_input: Option<f64>,
    /// Audio output tokens; the output price when absent.
    #[serde(default)]
    pub audio_output: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PricingFile {
    #[serde(default)]
    aliases: BTreeMap<String, Aliases>,
    #[serde(default)]
    models: BTreeMap<String, BTreeMap<String, Price>>,
}

/// A pricing table: per provider, per model name (or name prefix, see [`Pricing::price`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pricing {
    models: BTreeMap<String, BTreeMap<String, Price>>,
    /// Provider → providers whose tables it shares, tried in order after its own
    /// (`azure.ai.openai` → `openai`; `gcp.vertex_ai` → `gcp.gemini`, `anthropic`).
    aliases: BTreeMap<String, Vec<String>>,
}

/// An `[aliases]` value: one provider or a list, tried in order.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Aliases {
    One(String),
    Many(Vec<String>),
}

impl From<Aliases> for Vec<String> {
    fn from(a: Aliases) -> Self {
        match a {
            Aliases::One(p) => vec![p],
            Aliases::Many(ps) => ps,
        }
    }
}

/// A pricing file that could not be read or is invalid; names the file and position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricingError(String);

impl fmt::Display for PricingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PricingError {}

impl Pricing {
    /// The table shipped with veil (`rules/pricing.toml`).
    pub fn builtin() -> Pricing {
        // The built-in file is tested (`builtin_table_parses`), so failing here is a build bug.
        Pricing::from_toml(BUILTIN, "rules/pricing.toml")
            .expect("invariant: the built-in pricing table parses")
    }

    /// Parses a table in the `rules/pricing.toml` format; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Pricing, PricingError> {
        let file: PricingFile = toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            PricingError(format!("{origin}:{line}:{col}: {}", e.message()))
        })?;
        for (provider, models) in &file.models {
            for (model, p) in models {
                let prices = [Some(p.input), Some(p.output), p.cached_input, p.cache_write];
                if prices
                    .into_iter()
                    .flatten()
                    .any(|v| !v.is_finite() || v < 0.0)
                {
                    return Err(PricingError(format!(
                        "{origin}: models.{provider}.{model:?}: prices must be finite and >= 0"
                    )));
                }
            }
        }
        Ok(Pricing {
            models: file.models,
            aliases: file
                .aliases
                .into_iter()
                .map(|(k, v)| (k, v.into()))
                .collect(),
        })
    }

    /// The built-in table with the operator's file at `path` merged over it.
    pub fn load(path: &Path) -> Result<Pricing, PricingError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PricingError(format!("{}: {e}", path.display())))?;
        let user = Pricing::from_toml(&text, &path.display().to_string())?;
        let mut table = Pricing::builtin();
        table.merge(user);
        Ok(table)
    }

    /// Merges `other` over `self`: its entries replace same-named ones, others are added.
    pub fn merge(&mut self, other: Pricing) {
        for (provider, models) in other.models {
            self.models.entry(provider).or_default().extend(models);
        }
        self.aliases.extend(other.aliases);
    }

    /// The price of `model` at `provider`.
    ///
    /// Exact name first; otherwise the longest entry that `model` extends with only a
    /// version suffix: `-`/`@`/`:`-separated tokens that are digits or `latest`, `preview`,
    /// `exp`. Why not a plain prefix match: `gpt-4o-mini` would then be billed as `gpt-4o`
    /// whenever its own entry is missing, a 16× error; an unknown variant must be `None`.
    pub fn price(&self, provider: &str, model: &str) -> Option<&Price> {
        let model = model.trim();
        let model = model.strip_prefix("models/").unwrap_or(model);
        let aliases = self.aliases.get(provider).map_or(&[][..], Vec::as_slice);
        let tables = || {
            std::iter::once(provider)
                .chain(aliases.iter().map(String::as_str))
                .filter_map(|p| self.models.get(p))
        };
        tables()
            .find_map(|table| Self::price_in(table, model))
            .or_else(|| {
                let base = (provider == "aws.bedrock")
                    .then(|| bedrock_base_model(model))
                    .flatten()?;
                tables().find_map(|table| Self::price_in(table, base))
            })
    }

    /// `model`'s entry in one provider's table: exact, else the longest it extends with a
    /// version suffix.
    ///
    /// A version suffix starts with a separator, so an entry `model` extends ends where one
    /// of `model`'s separators is: each is tried from the right (longest entry first), a
    /// lookup each, instead of every entry of the table compared as a prefix (a dated model
    /// name such as `gpt-4o-mini-2024-07-18` cost ~3,000 instructions per exchange that way).
    fn price_in<'a>(table: &'a BTreeMap<String, Price>, model: &str) -> Option<&'a Price> {
        if let Some(p) = table.get(model) {
            return Some(p);
        }
        // Separators are ASCII, so each one's byte offset is a character boundary.
        (0..model.len())
            .rev()
            .filter(|&cut| matches!(model.as_bytes()[cut], b'-' | b'@' | b':'))
            .take_while(|&cut| is_version_suffix(&model[cut..]))
            .find_map(|cut| table.get(&model[..cut]))
    }

    /// Estimated cost in USD of `usage` for `model`, or `None` when the model is not priced
    /// or the provider reported no token counts.
    ///
    /// `usage.input_tokens` includes cached tokens (see [`Usage`]), so cache reads and
    /// writes are subtracted from it and billed at their own rates: never twice. Audio tokens
    /// (counted inside the input, cached and output totals) are billed at the audio rates
    /// where the table has them; the rest at the text rates.
    pub fn cost(&self, provider: &str, model: &str, usage: &Usage) -> Option<f64> {
        if usage.input_tokens.is_none() && usage.output_tokens.is_none() {
            return None;
        }
        let p = self.price(provider, model)?;
        let input = usage.input_tokens.unwrap_or(0);
        let read = usage.cache_read_tokens.unwrap_or(0);
        let write = usage.cache_creation_tokens.unwrap_or(0);
        let output = usage.output_tokens.unwrap_or(0);
        // Audio shares, each within its total (a count larger than its total is clamped).
        let read_audio = usage.cache_read_audio_tokens.unwrap_or(0).min(read);
        let audio_in = usage
            .input_audio_tokens
            .unwrap_or(0)
            .min(input)
            .saturating_sub(read_audio);
        let audio_out = usage.output_audio_tokens.unwrap_or(0).min(output);
        let uncached_text = input
            .saturating_sub(read)
            .saturating_sub(write)
            .saturating_sub(audio_in);
        let cached = p.cached_input.unwrap_or(p.input);
        let micro = uncached_text as f64 * p.input
            + (read - read_audio) as f64 * cached
            + read_audio as f64 * p.cached_audio_input.unwrap_or(cached)
            + write as f64 * p.cache_write.unwrap_or(p.input)
            + audio_in as f64 * p.audio_input.unwrap_or(p.input)
            + (output - audio_out) as f64 * p.output
            + audio_out as f64 * p.audio_output.unwrap_or(p.output);
        Some(micro / 1_000_000.0)
    }
}

/// The vendor's model name inside a Bedrock model ID, for the second lookup:
/// `[GEO.]VENDOR.NAME[-vN[:M]]` (`us.anthropic.claude-sonnet-4-20250514-v1:0` →
/// `claude-sonnet-4-20250514`), also as the last segment of an inference profile's ARN.
/// Bedrock's on-demand prices for a vendor's model are the vendor's list prices, so the
/// vendor's table prices it through `[aliases]`. `None` for a name of another shape.
fn bedrock_base_model(model: &str) -> Option<&str> {
    let model = match model.strip_prefix("arn:") {
        Some(arn) => arn.rsplit('/').next()?,
        None => model,
    };
    let (first, rest) = model.split_once('.')?;
    // A cross-region inference profile puts a geography before the vendor.
    let name = match rest.split_once('.') {
        Some((_vendor, name))
            if matches!(
                first,
                "us" | "eu" | "apac" | "global" | "us-gov" | "jp" | "au" | "ca"
            ) =>
        {
            name
        }
        _ => rest,
    };
    let name = match name.rsplit_once("-v") {
        Some((base, ver))
            if !base.is_empty()
                && ver
                    .split(':')
                    .all(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())) =>
        {
            base
        }
        _ => name,
    };
    (!name.is_empty()).then_some(name)
}

fn is_version_suffix(rest: &str) -> bool {
    let Some(tail) = rest.strip_prefix(['-', '@', ':']) else {
        return false;
    };
    tail.split(['-', '@', ':']).all(|token| {
        (!token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()))
            || matches!(token, "latest" | "preview" | "exp")
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `price_in` answered before it looked entries up by cut: every entry of the
    /// table compared as a prefix, the longest kept.
    fn price_in_by_scan<'a>(table: &'a BTreeMap<String, Price>, model: &str) -> Option<&'a Price> {
        if let Some(p) = table.get(model) {
            return Some(p);
        }
        table
            .iter()
            .filter(|(name, _)| {
                model
                    .strip_prefix(name.as_str())
                    .is_some_and(is_version_suffix)
            })
            .max_by_key(|(name, _)| name.len())
            .map(|(_, p)| p)
    }

    /// The lookup by cut finds the same entry as the scan, for every name of the built-in
    /// table with each of a set of suffixes, versions and not (dated, `@001`, `:0`,
    /// `-latest-2`, `-mini`, `-v2`, a bare separator), trimmed at each of its separators,
    /// and with a separator in front; both find entries for some and none for others.
    #[test]
    fn version_suffix_lookup_agrees_with_a_scan_of_the_table() {
        let pricing = Pricing::builtin();
        let suffixes = [
            "",
            "-2024-07-18",
            "-20250514",
            "@001",
            ":0",
            "-latest",
            "-latest-2",
            "-preview-05-06",
            "-exp",
            "-mini",
            "-v2",
            "-",
            "@",
            "-01-",
            "-2024-mini",
            ":latest:1",
        ];
        let (mut found, mut missed) = (0, 0);
        for table in pricing.models.values() {
            for name in table.keys() {
                for suffix in suffixes {
                    let model = format!("{name}{suffix}");
                    let mut tried = vec![model.clone(), format!("-{model}")];
                    tried.extend(
                        model
                            .match_indices(['-', '@', ':'])
                            .map(|(c, _)| model[..c].to_string()),
                    );
                    for m in tried {
                        let scan = price_in_by_scan(table, &m);
                        assert_eq!(Pricing::price_in(table, &m), scan, "{m:?}");
                        if scan.is_some() {
                            found += 1
                        } else {
                            missed += 1
                        }
                    }
                }
            }
        }
        assert!(
            found > 1000 && missed > 1000,
            "{found} found, {missed} missed"
        );
    }

    fn usage(input: u64, output: u64) -> Usage {
        Usage {
            input_tokens: Some(input),
            output_tokens: Some(output),
            ..Usage::default()
        }
    }

    #[test]
    fn builtin_table_parses_and_prices_the_main_models() {
        let p = Pricing::builtin();
        for (provider, model) in [
            ("openai", "gpt-4o"),
            ("openai", "gpt-4o-mini"),
            ("openai", "gpt-5"),
            ("anthropic", "claude-sonnet-4-5"),
            ("gcp.gemini", "gemini-2.5-flash"),
            ("mistral_ai", "mistral-large"),
            ("deepseek", "deepseek-chat"),
        ] {
            assert!(p.price(provider, model).is_some(), "{provider} {model}");
        }
    }

    #[test]
    fn builtin_table_names_only_known_providers() {
        // Prices are looked up by `gen_ai.provider.name`: a key the provider table never
        // produces (a typo, a renamed provider) would silently price nothing.
        let known: Vec<&str> = crate::exchange::providers::PROVIDERS
            .iter()
            .map(|p| p.provider.as_str())
            .collect();
        let p = Pricing::builtin();
        assert!(!p.models.is_empty() && !p.aliases.is_empty());
        for name in p
            .models
            .keys()
            .chain(p.aliases.keys())
            .chain(p.aliases.values().flatten())
        {
            assert!(known.contains(&name.as_str()), "{name}");
        }
    }

    #[test]
    fn price_matches_dated_names_but_not_other_variants() {
        let p = Pricing::builtin();
        assert_eq!(p.price("openai", "gpt-4o-2024-08-06").unwrap().input, 2.50);
        assert_eq!(
            p.price("openai", "gpt-4o-mini-2024-07-18").unwrap().input,
            0.15
        );
        assert_eq!(p.price("openai", "gpt-4o-mini").unwrap().input, 0.15);
        assert!(p.price("openai", "gpt-4o-audio-preview").is_none());
        assert!(p.price("openai", "gpt-4o2").is_none());
        assert_eq!(
            p.price("anthropic", "claude-sonnet-4-20250514")
                .unwrap()
                .output,
            15.0
        );
        assert_eq!(
            p.price("anthropic", "claude-opus-4-1-20250805")
                .unwrap()
                .input,
            15.0
        );
        assert_eq!(
            p.price("gcp.gemini", "models/gemini-1.5-pro-002")
                .unwrap()
                .output,
            5.0
        );
        assert_eq!(
            p.price("gcp.vertex_ai", "gemini-2.5-flash-preview-05-20")
                .unwrap()
                .input,
            0.30
        );
        assert_eq!(p.price("azure.ai.openai", "gpt-4o").unwrap().input, 2.50);
        // Claude on Bedrock: model IDs with vendor, geography and `-vN:M` around the name.
        for id in [
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
            "us.anthropic.claude-sonnet-4-20250514-v1:0",
            "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/eu.anthropic.claude-sonnet-4-20250514-v1:0",
        ] {
            assert_eq!(p.price("aws.bedrock", id).unwrap().output, 15.0, "{id}");
        }
        assert_eq!(
            p.price("aws.bedrock", "amazon.nova-lite-v1:0")
                .unwrap()
                .input,
            0.06
        );
        // Not a vendor's model name once unwrapped: unpriced, not a neighbour's price.
        for id in [
            "anthropic.claude-3-5-sonnet-v1x",
            "meta.llama3-70b-instruct-v1:0",
            "arn:aws:bedrock:us-east-1:1:application-inference-profile/a1b2c3",
        ] {
            assert!(p.price("aws.bedrock", id).is_none(), "{id}");
        }
        // The unwrapping is Bedrock's: Vertex AI shares Anthropic's table but not its IDs.
        assert!(
            p.price("gcp.vertex_ai", "us.anthropic.claude-sonnet-4-v1:0")
                .is_none()
        );
        // Claude on Vertex AI: `@`-dated names, Anthropic's list prices.
        assert_eq!(
            p.price("gcp.vertex_ai", "claude-sonnet-4-5@20250929")
                .unwrap()
                .output,
            15.0
        );
        assert!(p.price("openai", "my-finetune").is_none());
        assert!(p.price("nobody", "gpt-4o").is_none());
    }

    #[test]
    fn cost_bills_cached_tokens_once_at_their_rate() {
        let p = Pricing::builtin();
        // gpt-4o: 1M input of which 400k cached, 100k output.
        let u = Usage {
            cache_read_tokens: Some(400_000),
            ..usage(1_000_000, 100_000)
        };
        let cost = p.cost("openai", "gpt-4o", &u).unwrap();
        assert!(
            (cost - (0.6 * 2.5 + 0.4 * 1.25 + 0.1 * 10.0)).abs() < 1e-9,
            "{cost}"
        );
        // Anthropic: writes at the write rate.
        let u = Usage {
            cache_read_tokens: Some(100_000),
            cache_creation_tokens: Some(200_000),
            ..usage(1_000_000, 0)
        };
        let cost = p.cost("anthropic", "claude-sonnet-4", &u).unwrap();
        assert!(
            (cost - (0.7 * 3.0 + 0.1 * 0.3 + 0.2 * 3.75)).abs() < 1e-9,
            "{cost}"
        );
    }

    #[test]
    fn realtime_audio_and_text_tokens_are_billed_at_their_own_rates() {
        let p = Pricing::builtin();
        // gpt-realtime: 1M input = 300k text (100k of them cached) + 700k audio (200k
        // cached); 500k output = 100k text + 400k audio.
        let u = Usage {
            cache_read_tokens: Some(300_000),
            cache_read_audio_tokens: Some(200_000),
            input_audio_tokens: Some(700_000),
            output_audio_tokens: Some(400_000),
            ..usage(1_000_000, 500_000)
        };
        let cost = p.cost("openai", "gpt-realtime-2025-08-28", &u).unwrap();
        let want = 0.2 * 4.0 + 0.1 * 0.40 + 0.5 * 32.0 + 0.2 * 0.40 + 0.1 * 16.0 + 0.4 * 64.0;
        assert!((cost - want).abs() < 1e-9, "{cost} != {want}");
        // Without audio counts every token is text; a model without audio rates bills audio
        // tokens at its text rates.
        let text_only = p
            .cost("openai", "gpt-realtime", &usage(1_000_000, 0))
            .unwrap();
        assert!((text_only - 4.0).abs() < 1e-9);
        let u = Usage {
            input_audio_tokens: Some(1_000_000),
            ..usage(1_000_000, 0)
        };
        assert!((p.cost("openai", "gpt-4o", &u).unwrap() - 2.5).abs() < 1e-9);
        // Counts larger than their totals are clamped, never negative or billed twice.
        let u = Usage {
            input_audio_tokens: Some(5_000_000),
            output_audio_tokens: Some(9),
            ..usage(1_000_000, 0)
        };
        assert!((p.cost("openai", "gpt-realtime", &u).unwrap() - 32.0).abs() < 1e-9);
    }

    #[test]
    fn cost_is_none_for_unknown_models_or_missing_usage() {
        let p = Pricing::builtin();
        assert_eq!(p.cost("openai", "unknown-model", &usage(10, 10)), None);
        assert_eq!(p.cost("openai", "gpt-4o", &Usage::default()), None);
        assert_eq!(p.cost("openai", "gpt-4o", &usage(0, 0)), Some(0.0));
    }

    #[test]
    fn user_file_merges_over_builtin() {
        let mut p = Pricing::builtin();
        let user = Pricing::from_toml(
            "[models.openai]\n\"gpt-4o\" = { input = 1.0, output = 2.0 }\n\"my-ft\" = { input = 3.0, output = 4.0 }\n",
            "user.toml",
        )
        .unwrap();
        p.merge(user);
        assert_eq!(p.price("openai", "gpt-4o").unwrap().input, 1.0);
        assert_eq!(p.price("openai", "my-ft").unwrap().output, 4.0);
        assert_eq!(p.price("openai", "gpt-4o-mini").unwrap().input, 0.15);
    }

    #[test]
    fn bad_files_name_the_position_or_entry() {
        let err =
            Pricing::from_toml("[models.openai]\n\"x\" = { input = 1.0 }\n", "f.toml").unwrap_err();
        assert!(err.0.starts_with("f.toml:2:"), "{err}");
        let err = Pricing::from_toml(
            "[models.openai]\n\"x\" = { input = -1.0, output = 1.0 }\n",
            "f.toml",
        )
        .unwrap_err();
        assert!(err.0.contains("\"x\""), "{err}");
    }
}
