//! # Providers: the one table of the LLM providers veil knows.
//!
//! Each row says, for one provider: its OTel `gen_ai.provider.name`, the hosts that name it,
//! which of them `@defaults` intercepts, its built-in gateway route, and the API dialect its
//! own endpoint speaks. Before veil#11 these facts lived in four places (the config's default
//! intercept list and gateway routes, the provider detection, `veil rules test`) and could
//! drift apart: a host added to the intercept list but not to the detection would have been
//! recorded as `unknown`. The tests below tie the columns of each row to each other.
//!
//! Names come from the OpenTelemetry GenAI registry (`gen_ai.provider.name`) where it has
//! one (`mistral_ai`, `x_ai`, `azure.ai.openai`, ...); the others follow its spelling rules.
//! Part of the exchange step: plain data, no I/O.

use std::fmt;

/// A provider, by its `gen_ai.provider.name`.
///
/// [`Provider::OpenAiCompatible`] and [`Provider::AnthropicCompatible`] are servers veil does
/// not know by host that speak those APIs (vLLM, Ollama, LiteLLM, ...); [`Provider::Unknown`]
/// is everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Provider {
    /// `openai`.
    OpenAi,
    /// `anthropic`.
    Anthropic,
    /// `gcp.gemini`: the Generative Language API.
    GcpGemini,
    /// `gcp.vertex_ai`.
    GcpVertexAi,
    /// `aws.bedrock`: Bedrock Runtime (`bedrock-runtime.REGION.amazonaws.com`).
    AwsBedrock,
    /// `azure.ai.openai`.
    AzureOpenAi,
    /// `mistral_ai`.
    MistralAi,
    /// `groq`.
    Groq,
    /// `deepseek`.
    DeepSeek,
    /// `x_ai`.
    XAi,
    /// `perplexity`.
    Perplexity,
    /// `cohere`.
    Cohere,
    /// `openrouter`.
    OpenRouter,
    /// `together_ai`.
    TogetherAi,
    /// `fireworks_ai`.
    FireworksAi,
    /// `ollama`: Ollama's native API (`/api/chat`, `/api/generate`) on any host, usually a
    /// local one reached through a gateway route. Not an OTel registry value (local servers
    /// have none); Ollama's OpenAI-compatible endpoints are `openai_compatible`.
    Ollama,
    /// `openai_compatible`: an unknown host speaking the OpenAI API.
    OpenAiCompatible,
    /// `anthropic_compatible`: an unknown host speaking the Anthropic Messages API.
    AnthropicCompatible,
    /// `unknown`: veil did not recognize the host or the API.
    #[default]
    Unknown,
}

impl Provider {
    /// The `gen_ai.provider.name` value, as OTLP attributes, metrics and the ledger carry it.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::GcpGemini => "gcp.gemini",
            Provider::GcpVertexAi => "gcp.vertex_ai",
            Provider::AwsBedrock => "aws.bedrock",
            Provider::AzureOpenAi => "azure.ai.openai",
            Provider::MistralAi => "mistral_ai",
            Provider::Groq => "groq",
            Provider::DeepSeek => "deepseek",
            Provider::XAi => "x_ai",
            Provider::Perplexity => "perplexity",
            Provider::Cohere => "cohere",
            Provider::OpenRouter => "openrouter",
            Provider::TogetherAi => "together_ai",
            Provider::FireworksAi => "fireworks_ai",
            Provider::Ollama => "ollama",
            Provider::OpenAiCompatible => "openai_compatible",
            Provider::AnthropicCompatible => "anthropic_compatible",
            Provider::Unknown => "unknown",
        }
    }

    /// The provider named by `host` (a trailing dot ignored, compared as given: hosts reach
    /// veil lowercased), `None` when no row of [`PROVIDERS`] claims it.
    pub fn for_host(host: &str) -> Option<Provider> {
        let host = host.trim_end_matches('.');
        PROVIDERS
            .iter()
            .find(|p| {
                p.hosts.contains(&host)
                    || p.suffixes.iter().any(|s| host.ends_with(s))
                    || p.regional.iter().any(|(pre, suf)| {
                        host.strip_prefix(pre)
                            .and_then(|h| h.strip_suffix(suf))
                            .is_some_and(is_region_label)
                    })
            })
            .map(|p| p.provider)
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A cloud region's label (`us-east-1`, `europe-west4`, `us-gov-west-1`): lowercase letters,
/// digits and `-`, with a `-` and ending in a digit, so a bucket or other name under the
/// same suffix is not taken for a provider's regional host.
fn is_region_label(label: &str) -> bool {
    label.contains('-')
        && label.ends_with(|c: char| c.is_ascii_digit())
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The API family a provider's own endpoint speaks. Which parser runs is decided per request
/// by the path (see `provider::detect`); this column says what a request to the provider
/// looks like when veil has to make one up (`veil rules test`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI Chat Completions and the APIs compatible with it.
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Gemini `generateContent`.
    Gemini,
    /// Bedrock `Converse`.
    Bedrock,
}

impl Dialect {
    /// The request path of a chat request in this dialect, `None` when the path names the
    /// model (Gemini's `/v1beta/models/MODEL:generateContent`, Bedrock's
    /// `/model/MODEL/converse`), which veil does not guess.
    pub fn chat_route(self) -> Option<&'static str> {
        match self {
            Dialect::OpenAi => Some("/v1/chat/completions"),
            Dialect::Anthropic => Some("/v1/messages"),
            Dialect::Gemini | Dialect::Bedrock => None,
        }
    }
}

/// A built-in gateway route: `/NAME/...` on veil's listener goes to `BASE/...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gateway {
    /// The first path segment that selects the route.
    pub name: &'static str,
    /// The upstream base URL (`https://host`, no trailing slash).
    pub base: &'static str,
}

impl Gateway {
    /// The host of [`Gateway::base`] (`api.openai.com`).
    pub fn host(&self) -> &'static str {
        self.base.strip_prefix("https://").unwrap_or(self.base)
    }
}

/// One row of the provider table.
#[derive(Debug, Clone, Copy)]
pub struct ProviderInfo {
    /// The provider.
    pub provider: Provider,
    /// Hosts that name it exactly, lowercase.
    pub hosts: &'static [&'static str],
    /// Host suffixes that name it (`.openai.azure.com` for every Azure resource).
    pub suffixes: &'static [&'static str],
    /// `(prefix, suffix)` pairs that name it with exactly one DNS label between them: a
    /// regional host (`bedrock-runtime.` + `us-east-1` + `.amazonaws.com`), where a suffix
    /// alone would claim a whole cloud.
    pub regional: &'static [(&'static str, &'static str)],
    /// Its entries in the default intercept list (`@defaults`), in the config's syntax
    /// (`HOST` or `*.domain`). A subset of what `hosts` and `suffixes` claim: hosts veil
    /// recognizes but does not intercept by default (Vertex AI, Perplexity, Fireworks) are
    /// recorded by name once an operator adds them.
    pub intercept: &'static [&'static str],
    /// Its built-in gateway route, if it has one.
    pub gateway: Option<Gateway>,
    /// The dialect of its own endpoint.
    pub dialect: Dialect,
}

/// Every provider veil knows by host. Row order is the order of the default intercept list
/// and of the built-in gateway routes.
pub const PROVIDERS: &[ProviderInfo] = &[
    ProviderInfo {
        provider: Provider::OpenAi,
        hosts: &["api.openai.com"],
        suffixes: &[],
        regional: &[],
        intercept: &["api.openai.com"],
        gateway: Some(Gateway {
            name: "openai",
            base: "https://api.openai.com",
        }),
        dialect: Dialect::OpenAi,
    },
    ProviderInfo {
        provider: Provider::Anthropic,
        hosts: &["api.anthropic.com"],
        suffixes: &[],
        regional: &[],
        intercept: &["api.anthropic.com"],
        gateway: Some(Gateway {
            name: "anthropic",
            base: "https://api.anthropic.com",
        }),
        dialect: Dialect::Anthropic,
    },
    ProviderInfo {
        provider: Provider::GcpGemini,
        hosts: &["generativelanguage.googleapis.com"],
        suffixes: &[],
        regional: &[],
        intercept: &["generativelanguage.googleapis.com"],
        gateway: Some(Gateway {
            name: "gemini",
            base: "https://generativelanguage.googleapis.com",
        }),
        dialect: Dialect::Gemini,
    },
    ProviderInfo {
        provider: Provider::MistralAi,
        hosts: &["api.mistral.ai"],
        suffixes: &[],
        regional: &[],
        intercept: &["api.mistral.ai"],
        gateway: Some(Gateway {
            name: "mistral",
            base: "https://api.mistral.ai",
        }),
        dialect: Dialect::OpenAi,
    },
    ProviderInfo {
        provider: Provider::Groq,
        hosts: &["api.groq.com"],
        suffixes: &[],
        regional: &[],
        intercept: &["api.groq.com"],
        gateway: Some(Gateway {
            name: "groq",
            base: "https://api.groq.com",
        }),
        dialect: Dialect::OpenAi,
    },
    ProviderInfo {
        provider: Provider::TogetherAi,
        hosts: &["api.together.xyz", "api.together.ai"],
        suffixes: &[],
        regional: &[],
        intercept: &["api.together.xyz", "api.together.ai"],
        gateway: None,
        dialect: Dialect::OpenAi,
    },
    ProviderInfo {
        provider: Provider::OpenRouter,
        hosts: &["openrouter.ai"],
        suffixes: &[],
        regional: &[],
        intercept: &["openrouter.ai"],
        gateway: Some(Gateway {
            name: "openrouter",
            base: "https://openrouter.ai",
        }),
        dialect: Dialect::OpenAi,
    },
    ProviderInfo {
        provider: Provider::DeepSeek,
        hosts: &["api.deepseek.com"],
        suffixes: &[],
        regional: &[],
        intercept: &["api.deepseek.com"],
        gateway: Some(Gateway {
            name: "deepseek",
            base: "https://api.deepseek.com",
        }),
        dialect: Dialect::OpenAi,
    },
    ProviderInfo {
        provider: Provider::XAi,
        hosts: &["api.x.ai"],
        suffixes: &[],
        regional: &[],
        intercept: &["api.x.ai"],
        gateway: Some(Gateway {
            name: "xai",
            base: "https://api.x.ai",
        }),
        dialect: Dialect::OpenAi,
    },
    ProviderInfo {
        // Cohere's own v2 chat API is not parsed; its OpenAI-compatible API is.
        provider: Provider::Cohere,
        hosts: &["api.cohere.com", "api.cohere.ai"],
        suffixes: &[],
        regional: &[],
        intercept: &["api.cohere.com", "api.cohere.ai"],
        gateway: None,
        dialect: Dialect::OpenAi,
    },
    ProviderInfo {
        provider: Provider::AzureOpenAi,
        hosts: &[],
        suffixes: &[".openai.azure.com", ".cognitiveservices.azure.com"],
        regional: &[],
        intercept: &["*.openai.azure.com"],
        gateway: None,
        dialect: Dialect::OpenAi,
    },
    ProviderInfo {
        // Regional endpoints are `REGION-aiplatform.googleapis.com`; `@vertex` intercepts
        // them (see `intercept_group`).
        provider: Provider::GcpVertexAi,
        hosts: &["aiplatform.googleapis.com"],
        suffixes: &["-aiplatform.googleapis.com"],
        regional: &[],
        intercept: &[],
        gateway: None,
        dialect: Dialect::Gemini,
    },
    ProviderInfo {
        // Bedrock Runtime's hosts are `bedrock-runtime[-fips].REGION.amazonaws.com`;
        // `@bedrock` intercepts them (see `intercept_group`).
        provider: Provider::AwsBedrock,
        hosts: &[],
        suffixes: &[],
        regional: &[
            ("bedrock-runtime.", ".amazonaws.com"),
            ("bedrock-runtime-fips.", ".amazonaws.com"),
        ],
        intercept: &[],
        gateway: None,
        dialect: Dialect::Bedrock,
    },
    ProviderInfo {
        provider: Provider::Perplexity,
        hosts: &["api.perplexity.ai"],
        suffixes: &[],
        regional: &[],
        intercept: &[],
        gateway: None,
        dialect: Dialect::OpenAi,
    },
    ProviderInfo {
        provider: Provider::FireworksAi,
        hosts: &["api.fireworks.ai"],
        suffixes: &[],
        regional: &[],
        intercept: &[],
        gateway: None,
        dialect: Dialect::OpenAi,
    },
];

/// Vertex AI's regions with a `REGION-aiplatform.googleapis.com` endpoint for generative
/// models (Google Cloud's "Vertex AI locations" page, generative AI section, as of 2025),
/// for `@vertex`. A region added later is one more `--intercept` entry until it is listed.
pub const VERTEX_AI_REGIONS: &[&str] = &[
    "us-central1",
    "us-east1",
    "us-east4",
    "us-east5",
    "us-south1",
    "us-west1",
    "us-west4",
    "northamerica-northeast1",
    "southamerica-east1",
    "europe-central2",
    "europe-north1",
    "europe-southwest1",
    "europe-west1",
    "europe-west2",
    "europe-west3",
    "europe-west4",
    "europe-west6",
    "europe-west8",
    "europe-west9",
    "asia-east1",
    "asia-east2",
    "asia-northeast1",
    "asia-northeast3",
    "asia-south1",
    "asia-southeast1",
    "australia-southeast1",
    "me-central1",
    "me-central2",
    "me-west1",
];

/// AWS regions with a Bedrock Runtime endpoint (`bedrock-runtime.REGION.amazonaws.com`; AWS
/// General Reference, "Amazon Bedrock endpoints and quotas", as of 2025), for `@bedrock`. A
/// region added later is one more `--intercept` entry until it is listed.
pub const BEDROCK_REGIONS: &[&str] = &[
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "us-gov-east-1",
    "us-gov-west-1",
    "ca-central-1",
    "sa-east-1",
    "eu-central-1",
    "eu-central-2",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "il-central-1",
    "me-central-1",
    "ap-east-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-7",
];

/// Regions whose Bedrock Runtime also has a FIPS endpoint (`bedrock-runtime-fips.REGION…`).
pub const BEDROCK_FIPS_REGIONS: &[&str] = &[
    "us-east-1",
    "us-east-2",
    "us-west-2",
    "us-gov-east-1",
    "us-gov-west-1",
    "ca-central-1",
];

/// The hosts an intercept-list group stands for: `@defaults` (every row's `intercept`
/// entries, as [`default_intercept`]) or `@vertex` (Vertex AI's global host and one host per
/// region in [`VERTEX_AI_REGIONS`]: regional hosts share no domain of their own, and
/// `*.googleapis.com` would let the CA sign for every Google API) or `@bedrock` (one
/// `bedrock-runtime` host per region in [`BEDROCK_REGIONS`] and a FIPS host per region in
/// [`BEDROCK_FIPS_REGIONS`], for the same reason: `*.amazonaws.com` is every AWS service).
/// `None` for another name.
pub fn intercept_group(name: &str) -> Option<Vec<String>> {
    match name {
        "@defaults" => Some(default_intercept().map(str::to_string).collect()),
        "@vertex" => Some(
            std::iter::once("aiplatform.googleapis.com".to_string())
                .chain(
                    VERTEX_AI_REGIONS
                        .iter()
                        .map(|r| format!("{r}-aiplatform.googleapis.com")),
                )
                .collect(),
        ),
        "@bedrock" => Some(
            BEDROCK_REGIONS
                .iter()
                .map(|r| format!("bedrock-runtime.{r}.amazonaws.com"))
                .chain(
                    BEDROCK_FIPS_REGIONS
                        .iter()
                        .map(|r| format!("bedrock-runtime-fips.{r}.amazonaws.com")),
                )
                .collect(),
        ),
        _ => None,
    }
}

/// The default intercept list (`@defaults`): every row's `intercept` entries, in table order.
pub fn default_intercept() -> impl Iterator<Item = &'static str> {
    PROVIDERS.iter().flat_map(|p| p.intercept.iter().copied())
}

/// The built-in gateway routes, in table order.
pub fn gateways() -> impl Iterator<Item = Gateway> {
    PROVIDERS.iter().filter_map(|p| p.gateway)
}

/// The row whose gateway route is called `name` (`openai`, `gemini`, ...).
pub fn by_gateway_name(name: &str) -> Option<&'static ProviderInfo> {
    PROVIDERS
        .iter()
        .find(|p| p.gateway.is_some_and(|g| g.name == name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_intercepted_host_is_recognized_as_its_own_provider() {
        for p in PROVIDERS {
            for entry in p.intercept {
                // `*.domain` matches any subdomain: try one.
                let host = match entry.strip_prefix("*.") {
                    Some(domain) => format!("resource.{domain}"),
                    None => entry.to_string(),
                };
                assert_eq!(Provider::for_host(&host), Some(p.provider), "{entry}");
            }
        }
    }

    #[test]
    fn every_gateway_base_names_its_own_provider() {
        for p in PROVIDERS {
            if let Some(g) = p.gateway {
                assert!(g.base.starts_with("https://"), "{}", g.name);
                let host = g.host();
                assert!(!host.contains('/'), "{}: base has no path", g.name);
                assert_eq!(Provider::for_host(host), Some(p.provider), "{}", g.name);
                assert_eq!(
                    by_gateway_name(g.name).map(|r| r.provider),
                    Some(p.provider)
                );
            }
        }
    }

    #[test]
    fn each_provider_has_one_row_and_a_distinct_name() {
        let mut seen = std::collections::HashSet::new();
        for p in PROVIDERS {
            assert!(seen.insert(p.provider), "{} twice", p.provider);
        }
        let names: std::collections::HashSet<_> = PROVIDERS
            .iter()
            .map(|p| p.provider.as_str())
            .chain([
                "ollama",
                "openai_compatible",
                "anthropic_compatible",
                "unknown",
            ])
            .collect();
        assert_eq!(names.len(), PROVIDERS.len() + 4);
    }

    #[test]
    fn hosts_map_to_providers_and_strangers_to_none() {
        assert_eq!(
            Provider::for_host("api.openai.com."),
            Some(Provider::OpenAi)
        );
        assert_eq!(
            Provider::for_host("my.cognitiveservices.azure.com"),
            Some(Provider::AzureOpenAi)
        );
        assert_eq!(
            Provider::for_host("us-central1-aiplatform.googleapis.com"),
            Some(Provider::GcpVertexAi)
        );
        assert_eq!(
            Provider::for_host("bedrock-runtime.eu-west-3.amazonaws.com"),
            Some(Provider::AwsBedrock)
        );
        assert_eq!(
            Provider::for_host("bedrock-runtime-fips.us-east-1.amazonaws.com"),
            Some(Provider::AwsBedrock)
        );
        // One label between prefix and suffix: not the control plane, not a nested name.
        assert_eq!(Provider::for_host("bedrock.us-east-1.amazonaws.com"), None);
        assert_eq!(
            Provider::for_host("bedrock-runtime.a.b.amazonaws.com"),
            None
        );
        assert_eq!(Provider::for_host("bedrock-runtime..amazonaws.com"), None);
        // An S3 bucket named like the service is not Bedrock.
        assert_eq!(Provider::for_host("bedrock-runtime.s3.amazonaws.com"), None);
        // The bare Azure domain is not a resource; look-alike hosts are not providers.
        assert_eq!(Provider::for_host("openai.azure.com"), None);
        assert_eq!(Provider::for_host("api.openai.com.evil.test"), None);
        assert_eq!(Provider::for_host("localhost"), None);
        assert_eq!(Provider::Unknown.as_str(), "unknown");
        assert_eq!(Provider::default(), Provider::Unknown);
    }

    #[test]
    fn default_lists_keep_their_order() {
        let intercept: Vec<_> = default_intercept().collect();
        assert_eq!(intercept.first(), Some(&"api.openai.com"));
        assert_eq!(intercept.last(), Some(&"*.openai.azure.com"));
        assert_eq!(intercept.len(), 13);
        let names: Vec<_> = gateways().map(|g| g.name).collect();
        assert_eq!(
            names,
            [
                "openai",
                "anthropic",
                "gemini",
                "mistral",
                "groq",
                "openrouter",
                "deepseek",
                "xai"
            ]
        );
    }
}
