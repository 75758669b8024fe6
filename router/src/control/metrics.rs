//! `/metrics`: the router's counters in Prometheus text format, encoded by `prometheus-client`.
//!
//! Owns the metric names, help texts and labels. Values are read at scrape time from what the
//! shards and the pipeline already count (atomics and a histogram), so the hot path never
//! touches a registry; a fresh registry per scrape keeps this free of globals.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering::Relaxed;

use crate::delivery::DeliveryHandle;
use crate::gateway::handle::ShardHandle;
use crate::rest::RestProxy;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabel {
    shard: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardEndpoint {
    shard: u32,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabel {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardCause {
    shard: u32,
    cause: String,
}

/// A counter holding the value an atomic has now.
fn counter_from(value: &std::sync::atomic::AtomicU64) -> Counter {
    let counter = Counter::default();
    counter.inc_by(value.load(std::sync::atomic::Ordering::Relaxed));
    counter
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabel {
    scope: String,
}

/// Renders every metric in Prometheus text exposition format.
pub fn render(
    shards: &[ShardHandle],
    delivery: &DeliveryHandle,
    rest: Option<&RestProxy>,
) -> String {
    let mut registry = Registry::with_prefix("shardhook");
    let stats = delivery.stats();
    let endpoints: Vec<String> = delivery.endpoint_names().map(str::to_owned).collect();

    let received = Family::<ShardLabel, Counter>::default();
    let reconnects = Family::<ShardCause, Counter>::default();
    let resumes = Family::<ShardLabel, Counter>::default();
    let queue = Family::<ShardLabel, Gauge>::default();
    let connected = Family::<ShardLabel, Gauge>::default();
    for shard in shards {
        let label = ShardLabel { shard: shard.id() };
        received.get_or_create(&label).inc_by(shard.received());
        let status = shard.status().borrow().clone();
        resumes.get_or_create(&label).inc_by(status.resumes as u64);
        for (cause, n) in &status.reconnect_causes {
            let key = ShardCause {
                shard: shard.id(),
                cause: (*cause).to_owned(),
            };
            reconnects.get_or_create(&key).inc_by(*n);
        }
        queue
            .get_or_create(&label)
            .set(delivery.queue_depth(shard.id()) as i64);
        let active = status.state == crate::gateway::handle::ShardState::Active;
        connected.get_or_create(&label).set(active as i64);
    }
    registry.register(
        "events_received",
        "Dispatch events received from the gateway",
        received,
    );
    registry.register(
        "reconnects",
        "Gateway connections that ended, by cause",
        reconnects,
    );
    registry.register("resumes", "Sessions resumed", resumes);
    registry.register(
        "queue_depth",
        "Events waiting in a shard's delivery queue",
        queue,
    );
    registry.register(
        "shard_connected",
        "1 while the shard is connected and identified",
        connected,
    );

    let delivered = Family::<ShardEndpoint, Counter>::default();
    let rows = stats.delivered_by.load();
    for (shard, row) in rows.iter() {
        for (index, n) in row.iter().enumerate() {
            let n = n.load(std::sync::atomic::Ordering::Relaxed);
            if n > 0 {
                let key = ShardEndpoint {
                    shard: *shard,
                    endpoint: endpoints[index].clone(),
                };
                delivered.get_or_create(&key).inc_by(n);
            }
        }
    }
    drop(rows);
    registry.register(
        "events_delivered",
        "Events delivered (2xx), by shard and endpoint",
        delivered,
    );

    let per_endpoint = |name: &str,
                        help: &str,
                        values: &[std::sync::atomic::AtomicU64],
                        registry: &mut Registry| {
        let family = Family::<EndpointLabel, Counter>::default();
        for (i, value) in values.iter().enumerate() {
            let key = EndpointLabel {
                endpoint: endpoints[i].clone(),
            };
            family
                .get_or_create(&key)
                .inc_by(value.load(std::sync::atomic::Ordering::Relaxed));
        }
        registry.register(name, help, family);
    };
    per_endpoint(
        "retries",
        "Delivery attempts after the first",
        &stats.retries_by_endpoint,
        &mut registry,
    );
    let dead_letters = Family::<EndpointLabel, Counter>::default();
    for (i, value) in stats.dead_letters_by_endpoint.iter().enumerate() {
        let key = EndpointLabel {
            endpoint: endpoints[i].clone(),
        };
        dead_letters.get_or_create(&key).inc_by(value.load(Relaxed));
    }
    // An empty label is no label to Prometheus: `sum()` counts these with the rest.
    let unattributed = EndpointLabel {
        endpoint: String::new(),
    };
    dead_letters
        .get_or_create(&unattributed)
        .inc_by(stats.dead_letters_unattributed.load(Relaxed));
    registry.register(
        "dead_letters",
        "Requests dead-lettered, by the endpoint that last failed them (empty: none did)",
        dead_letters,
    );
    per_endpoint(
        "rate_limit_waits",
        "Requests that waited for an endpoint's rate limit",
        &stats.rate_limit_waits,
        &mut registry,
    );
    let opened = Family::<EndpointLabel, Counter>::default();
    let resumed = Family::<EndpointLabel, Counter>::default();
    for (name, (all, resuming)) in endpoints.iter().zip(delivery.connections()) {
        let key = EndpointLabel {
            endpoint: name.clone(),
        };
        opened.get_or_create(&key).inc_by(all);
        resumed.get_or_create(&key).inc_by(resuming);
    }
    registry.register(
        "endpoint_connections",
        "Connections opened to an endpoint (TCP, and TLS for https)",
        opened,
    );
    registry.register(
        "endpoint_tls_resumed",
        "Connections whose TLS handshake resumed an earlier session",
        resumed,
    );
    registry.register(
        "delivery_latency_seconds",
        "From the gateway read of a batch's first event to its 2xx",
        stats.latency.clone(),
    );
    registry.register(
        "events_filtered",
        "Events dropped by events.include/exclude",
        counter_from(&stats.events_filtered),
    );
    registry.register(
        "interactions_deferred",
        "Interactions the router deferred",
        counter_from(&stats.interactions_deferred),
    );
    registry.register(
        "interactions_unlaned",
        "Interactions that found every lane taken (interactions.max_lanes) and went with their shard's other events",
        counter_from(&stats.interactions_unlaned),
    );
    registry.register(
        "interaction_defer_latency_seconds",
        "From the gateway read of an interaction to Discord's answer to its deferral",
        stats.defer_latency.clone(),
    );

    registry.register(
        "events_spooled",
        "Events written to the disk spool because no endpoint could take them",
        counter_from(&stats.events_spooled),
    );
    let (used, limit) = delivery.spool_bytes();
    let gauge = |value: u64| {
        let g = Gauge::<i64>::default();
        g.set(value as i64);
        g
    };
    registry.register("spool_bytes", "Bytes in the disk spool", gauge(used));
    let cluster_bound = stats.cluster_dead_letters_max.load(Relaxed);
    if cluster_bound > 0 {
        registry.register(
            "cluster_dead_letters",
            "Dead letters in the cluster's Redis stream, as last written",
            gauge(stats.cluster_dead_letters.load(Relaxed)),
        );
        registry.register(
            "cluster_dead_letters_limit",
            "The stream's bound (cluster.dead_letters_max); at it, shards wait",
            gauge(cluster_bound),
        );
        registry.register(
            "cluster_leases_taken",
            "Shard leases this router took (at start, takeovers, rebalancing)",
            counter_from(&stats.cluster_leases_taken),
        );
    }
    registry.register(
        "spool_limit_bytes",
        "The disk spool's bound (state.spool_max_bytes)",
        gauge(limit),
    );

    if let Some(rest) = rest {
        register_rest(&mut registry, rest);
    }

    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

/// The REST proxy's metrics, when it is on.
fn register_rest(registry: &mut Registry, rest: &RestProxy) {
    let stats = rest.stats();
    let requests = Family::<RouteStatus, Counter>::default();
    for ((route, status), n) in stats.requests() {
        requests
            .get_or_create(&RouteStatus { route, status })
            .inc_by(n);
    }
    registry.register(
        "rest_requests",
        "REST requests through the proxy, by route template and the status answered",
        requests,
    );
    registry.register(
        "rest_wait_seconds",
        "How long REST requests waited for their rate limits before they were sent",
        stats.wait.clone(),
    );
    let limited = Family::<ScopeLabel, Counter>::default();
    for (scope, n) in stats.rate_limited_by_scope() {
        let key = ScopeLabel {
            scope: scope.to_owned(),
        };
        limited.get_or_create(&key).inc_by(n);
    }
    registry.register(
        "rest_rate_limited",
        "429s: Discord's by scope (user, global, shared), and the router's own (router)",
        limited,
    );
    let (count, limit) = rest.invalid_requests();
    let gauge = |value: u64| {
        let g = Gauge::<i64>::default();
        g.set(value as i64);
        g
    };
    registry.register(
        "rest_invalid_requests",
        "Answers of 401, 403 or 429 from Discord in the last 10 minutes",
        gauge(count as u64),
    );
    registry.register(
        "rest_invalid_request_limit",
        "At this many invalid answers in 10 minutes the proxy answers 503 (rest.invalid_request_limit)",
        gauge(limit.into()),
    );
}
