//! Whose exchange is it: the user's pseudonym, never the raw ID.
//!
//! Part of the record step. The rules file's identity headers and JSON paths come first
//! ([`CompiledRules::find_user`]), then the user ID the provider parser found
//! ([`Conversation::user_id`]: the provider's own field or the `x-veil-user` tag). Both end as
//! `u_<16 hex>` from the one pseudonym function (`keys::pseudonymize_user`, through the
//! rules), which the sealed store's index and `forget --user` use too.
//!
//! The request JSON is the one the provider parse already decoded and parsed
//! ([`Conversation::request_json`]), also for an endpoint veil does not parse: the body is
//! never decoded twice.

use crate::exchange::{Conversation, Exchange};
use crate::keys::UserPseudonym;
use crate::redact::CompiledRules;

/// The pseudonym of the exchange's user, or `None` when nothing names one.
///
/// Identity headers are looked up among the `x-veil-*` tags first, then the request headers
/// as sent upstream.
pub(super) fn user_pseudonym(
    ex: &Exchange,
    conv: &Conversation,
    rules: &CompiledRules,
) -> Option<UserPseudonym> {
    let mut identity_headers = ex.tags.clone();
    identity_headers.extend(ex.request_headers.iter().cloned());
    rules
        .find_user(conv.request_json.as_ref(), &identity_headers)
        .or_else(|| conv.user_id.as_deref().map(|u| rules.pseudonymize_user(u)))
}
