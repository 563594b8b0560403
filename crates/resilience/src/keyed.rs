//! Keys for per-key middleware (rate limits per user, IP or API key).

use std::hash::Hash;

/// Extracts the key a request is limited or isolated by.
///
/// Implemented for closures `Fn(&Req) -> K`.
pub trait MakeKey<Req> {
    /// The key type.
    type Key: Hash + Eq + Clone + Send + Sync + 'static;

    /// The key of `request`.
    fn make_key(&self, request: &Req) -> Self::Key;
}

impl<F, Req, K> MakeKey<Req> for F
where
    F: Fn(&Req) -> K,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Key = K;

    fn make_key(&self, request: &Req) -> K {
        self(request)
    }
}
