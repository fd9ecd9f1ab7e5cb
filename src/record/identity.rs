//! Whose exchange is it: the users' pseudonyms, never the raw IDs.
//!
//! Part of the record step. The rules file's identity headers and JSON paths come first
//! ([`CompiledRules::find_users`]), then the user ID the provider parser found
//! ([`Conversation::user_id`]: the provider's own field or the `x-veil-user` tag). Both end as
//! `u_<16 hex>` from the one pseudonym function (`keys::pseudonymize_user`, through the
//! rules), which the sealed store's index and `forget --user` use too.
//!
//! The request JSON is the one the provider parse already decoded and parsed
//! ([`Conversation::request_json`]), also for an endpoint veil does not parse: the body is
//! decoded once. A Chat Completions or Messages request read without its messages' tree is
//! parsed a second time, from the same decoded bytes, only for rules with an identity path
//! that reaches into its messages ([`Conversation::request_tree`]).

use crate::exchange::{Conversation, Exchange};
use crate::keys::UserPseudonym;
use crate::redact::CompiledRules;

/// Every user the exchange names, as pseudonyms, deduplicated: the identity sources of the
/// rules in precedence order ([`CompiledRules::find_users`]), then the provider parser's
/// user ID. The first is the exchange's user (the record's `user_pseudonym`); all of them are
/// indexed for `forget --user`. At most [`crate::redact::MAX_IDENTITIES`] + 1.
///
/// Identity headers are looked up among the `x-veil-*` tags first, then the request headers
/// as sent upstream.
pub(super) fn user_pseudonyms(
    ex: &Exchange,
    conv: &Conversation,
    rules: &CompiledRules,
) -> Vec<UserPseudonym> {
    let identity_headers = ex.tags.iter().chain(&ex.request_headers);
    // A Chat Completions or Messages request read directly has no `messages` in its tree;
    // the whole tree is parsed again only for rules that look for a user inside the messages.
    let whole;
    let request = if conv.request_messages_omitted.is_some() && rules.identity_may_reach("messages")
    {
        whole = conv.request_tree();
        whole.as_deref()
    } else {
        conv.request_json.as_ref()
    };
    let mut all = rules.find_users(request, identity_headers);
    if let Some(p) = conv.user_id.as_deref().map(|u| rules.pseudonymize_user(u))
        && !all.contains(&p)
    {
        all.push(p);
    }
    all
}
