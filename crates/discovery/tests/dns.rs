//! The DNS SRV source against a small authoritative server on loopback UDP: glue addresses and
//! targets resolved separately, the lowest priority only, changes followed, a name with no
//! records, and a server that stops answering.
#![cfg(feature = "dns")]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::until;
use mainstay_discovery::dns::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig,
};
use mainstay_discovery::dns::hickory_resolver::net::runtime::TokioRuntimeProvider;
use mainstay_discovery::dns::hickory_resolver::proto::op::{Message, OpCode, ResponseCode};
use mainstay_discovery::dns::hickory_resolver::proto::rr::rdata::{A, SRV};
use mainstay_discovery::dns::hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use mainstay_discovery::dns::hickory_resolver::{ResolverBuilder, TokioResolver};
use mainstay_discovery::dns::{DnsOptions, watch_srv};
use mainstay_discovery::{Endpoint, Snapshot};
use tokio::net::UdpSocket;

const SERVICE: &str = "_http._tcp.catalog.test.";

/// The zone: SRV records `(priority, port, target)`, and which targets get glue.
#[derive(Default)]
struct Zone {
    srv: Vec<(u16, u16, &'static str)>,
    glue: bool,
    /// Drop every query (a server that stopped answering).
    silent: bool,
}

fn address_of(target: &str) -> Ipv4Addr {
    match target {
        "a.test." => Ipv4Addr::new(127, 0, 0, 11),
        "b.test." => Ipv4Addr::new(127, 0, 0, 12),
        _ => Ipv4Addr::new(127, 0, 0, 13),
    }
}

fn record(name: &str, data: RData) -> Record {
    Record::from_rdata(Name::from_ascii(name).unwrap(), 5, data)
}

async fn serve(zone: Arc<Mutex<Zone>>) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        loop {
            let (len, peer) = socket.recv_from(&mut buffer).await.unwrap();
            let Ok(query) = Message::from_vec(&buffer[..len]) else {
                continue;
            };
            let Some(bytes) = answer(&zone.lock().unwrap(), &query) else {
                continue;
            };
            let _ = socket.send_to(&bytes, peer).await;
        }
    });
    address
}

/// The zone's answer to `query`, or `None` to drop it.
fn answer(zone: &Zone, query: &Message) -> Option<Vec<u8>> {
    if zone.silent {
        return None;
    }
    let mut answer = Message::response(query.metadata.id, OpCode::Query);
    answer.metadata.recursion_desired = query.metadata.recursion_desired;
    answer.metadata.recursion_available = true;
    answer.metadata.authoritative = true;
    let question = query.queries.first().cloned()?;
    answer.add_query(question.clone());
    let name = question.name().to_ascii();
    match (question.query_type(), name.as_str()) {
        (RecordType::SRV, SERVICE) if !zone.srv.is_empty() => {
            for (priority, port, target) in &zone.srv {
                let target_name = Name::from_ascii(target).unwrap();
                answer.add_answer(record(
                    SERVICE,
                    RData::SRV(SRV::new(*priority, 10, *port, target_name)),
                ));
                if zone.glue {
                    answer.add_additional(record(target, RData::A(A(address_of(target)))));
                }
            }
        }
        (RecordType::A, "a.test." | "b.test." | "c.test.") => {
            answer.add_answer(record(&name, RData::A(A(address_of(&name)))));
        }
        (RecordType::A | RecordType::AAAA, _) if name.ends_with(".test.") => {}
        _ => answer.metadata.response_code = ResponseCode::NXDomain,
    }
    Some(answer.to_vec().unwrap())
}

fn resolver(server: SocketAddr) -> TokioResolver {
    let mut connection = ConnectionConfig::udp();
    connection.port = server.port();
    let mut config = ResolverConfig::default();
    config.add_name_server(NameServerConfig::new(server.ip(), true, vec![connection]));
    let mut builder: ResolverBuilder<TokioRuntimeProvider> =
        TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    builder.options_mut().cache_size = 0;
    builder.options_mut().attempts = 1;
    builder.options_mut().timeout = Duration::from_millis(200);
    builder.build().unwrap()
}

fn fast() -> DnsOptions {
    DnsOptions {
        min_interval: Duration::from_millis(20),
        max_interval: Duration::from_millis(50),
        backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
    }
}

fn authorities(snapshot: &Snapshot) -> Vec<String> {
    snapshot.endpoints.iter().map(Endpoint::authority).collect()
}

#[tokio::test]
async fn srv_records_become_endpoints_and_changes_are_followed() {
    let zone = Arc::new(Mutex::new(Zone {
        srv: vec![(10, 8082, "a.test."), (10, 9082, "b.test.")],
        glue: true,
        silent: false,
    }));
    let server = serve(Arc::clone(&zone)).await;
    let mut source = watch_srv(resolver(server), SERVICE, fast());

    let first = until(&mut source, |s| s.fresh && s.endpoints.len() == 2).await;
    assert_eq!(authorities(&first), ["127.0.0.11:8082", "127.0.0.12:9082"]);
    assert_eq!(first.endpoints[0].meta["target"], "a.test");

    // Without glue, targets are resolved one by one; a backup priority is ignored.
    {
        let mut zone = zone.lock().unwrap();
        zone.glue = false;
        zone.srv = vec![
            (10, 8082, "a.test."),
            (10, 7000, "c.test."),
            (20, 9999, "b.test."),
        ];
    }
    let next = until(&mut source, |s| s.endpoints.iter().any(|e| e.port == 7000)).await;
    assert_eq!(authorities(&next), ["127.0.0.11:8082", "127.0.0.13:7000"]);

    // A server that stops answering: the last endpoints stay, marked not fresh ...
    zone.lock().unwrap().silent = true;
    let stale = until(&mut source, |s| !s.fresh).await;
    assert_eq!(authorities(&stale), authorities(&next));
    // ... until it answers again.
    zone.lock().unwrap().silent = false;
    until(&mut source, |s| s.fresh).await;

    // No records at all: an empty service, not an error.
    zone.lock().unwrap().srv.clear();
    let empty = until(&mut source, |s| s.endpoints.is_empty()).await;
    assert!(empty.fresh);
}
