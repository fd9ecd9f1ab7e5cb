//! Whose exchange is it: the user's pseudonym, never the raw ID.
//!
//! Part of the record step. The rules file's identity headers and JSON paths come first
//! ([`CompiledRules::find_user`]), then the user ID the provider parser found
//! ([`Conversation::user_id`]: the provider's own field or the `x-veil-user` tag). Both end as
//! `u_<16 hex>` from the one pseudonym function (`keys::pseudonymize_user`, through the
//! rules), which the sealed store's index and `forget --user` use too.

use serde_json::Value;

use crate::exchange::{self, Conversation, Exchange};
use crate::redact::CompiledRules;

/// The pseudonym of the exchange's user, or `None` when nothing names one.
///
/// Identity headers are looked up among the `x-veil-*` tags first, then the request headers
/// as sent upstream.
pub(super) fn user_pseudonym(
    ex: &Exchange,
    conv: &Conversation,
    rules: &CompiledRules,
) -> Option<String> {
    let mut identity_headers = ex.tags.clone();
    identity_headers.extend(ex.request_headers.iter().cloned());
    let request_json: Option<Value> = ex
        .request_body
        .decoded(64 << 20)
        .ok()
        .and_then(|b| exchange::json::from_slice(&b).ok());
    rules
        .find_user(request_json.as_ref(), &identity_headers)
        .or_else(|| conv.user_id.as_deref().map(|u| rules.pseudonymize_user(u)))
}
