//! Where each service's endpoints come from: a static list, Consul, or DNS SRV records.

use std::collections::HashMap;

use mainstay_discovery::Snapshot;
use tokio::sync::watch;

use crate::StartError;
use crate::config::{Discovery, GatewayConfig};

/// Starts discovery for every service in [`BACKENDS`](crate::BACKENDS), as `config` says: a static
/// list, Consul's passing instances (`CONSUL_HTTP_ADDR`), or DNS SRV records.
///
/// # Errors
///
/// The Consul address or the system's DNS configuration is unusable.
///
/// # Panics
///
/// Outside a tokio runtime.
pub fn discover(
    config: &GatewayConfig,
) -> Result<HashMap<&'static str, watch::Receiver<Snapshot>>, StartError> {
    use mainstay_discovery::consul::{ConsulClient, WatchOptions, watch_service};
    use mainstay_discovery::dns::{DnsOptions, hickory_resolver::TokioResolver, watch_srv};

    let consul = config
        .consul_addr
        .as_deref()
        .map(ConsulClient::new)
        .transpose()
        .map_err(|e| StartError::Discovery(e.to_string()))?
        .map(|client| match &config.consul_token {
            Some(token) => client.token(token.expose()),
            None => client,
        });
    let mut resolver = None;
    let mut sources = HashMap::new();
    for (name, discovery) in &config.discovery {
        let source = match discovery {
            Discovery::Static(endpoints) => mainstay_discovery::fixed(endpoints.clone()),
            Discovery::Consul => {
                let client = consul
                    .clone()
                    .ok_or_else(|| StartError::Discovery("CONSUL_HTTP_ADDR is not set".into()))?;
                watch_service(client, *name, WatchOptions::default())
            }
            Discovery::Srv(srv) => {
                if resolver.is_none() {
                    let built = TokioResolver::builder_tokio()
                        .and_then(mainstay_discovery::dns::hickory_resolver::ResolverBuilder::build)
                        .map_err(|e| StartError::Discovery(format!("DNS: {e}")))?;
                    resolver = Some(built);
                }
                let resolver = resolver.clone().ok_or(StartError::NoDiscovery(name))?;
                watch_srv(resolver, srv.clone(), DnsOptions::default())
            }
        };
        sources.insert(*name, source);
    }
    Ok(sources)
}
