//! Prometheus metrics, in the text exposition format (0.0.4), from a registry
//! owned by the server (no global state: several servers in one process keep
//! their own counts).
//!
//! Counters are bumped where things happen; gauges that describe state (key
//! ages, time to the next rotation, reload times, open connections) are
//! computed from that state when `/metrics` is scraped.

use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::SystemTime;

use prometheus::{Encoder as _, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::config::ClusterConfig;
use crate::health::Health;
use crate::issuer::Issuers;
use crate::keys::store::KeyRecord;

/// The routes requests are counted by (never the raw path: its cardinality
/// is the client's choice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Discovery,
    Jwks,
    Token,
    TokenReview,
    /// The external signer's endpoints (`<issuer path>/externaljwt/v1/...`).
    ExternalJwt,
    Healthz,
    Readyz,
    Metrics,
    /// The admin API (`/admin/v1/clusters...`).
    Admin,
    Other,
}

impl Route {
    const ALL: [Route; 10] = [
        Route::Discovery,
        Route::Jwks,
        Route::Token,
        Route::TokenReview,
        Route::ExternalJwt,
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::Admin,
        Route::Other,
    ];

    /// Its place in `ALL` (declaration order), for per-route tables.
    fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Route::Discovery => "discovery",
            Route::Jwks => "jwks",
            Route::Token => "token",
            Route::TokenReview => "tokenreview",
            Route::ExternalJwt => "externaljwt",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::Admin => "admin",
            Route::Other => "other",
        }
    }
}

/// How a mint attempt ended, for `tokens_minted_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MintOutcome {
    Issued,
    Unauthorized,
    Forbidden,
    RateLimited,
    Invalid,
    Failed,
}

impl MintOutcome {
    fn name(self) -> &'static str {
        match self {
            MintOutcome::Issued => "issued",
            MintOutcome::Unauthorized => "unauthorized",
            MintOutcome::Forbidden => "forbidden",
            MintOutcome::RateLimited => "rate_limited",
            MintOutcome::Invalid => "invalid",
            MintOutcome::Failed => "failed",
        }
    }
}

/// Where a request to sign for kube-apiserver came in: its Unix socket, or
/// the issuer API's signing endpoint (the relay).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignVia {
    Socket,
    Api,
}

impl SignVia {
    pub fn name(self) -> &'static str {
        match self {
            SignVia::Socket => "socket",
            SignVia::Api => "api",
        }
    }
}

/// How a signing request ended, for `external_sign_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignOutcome {
    Signed,
    /// Malformed claims (gRPC INVALID_ARGUMENT).
    Invalid,
    /// Claims this cluster will not sign (PERMISSION_DENIED).
    Denied,
    /// The cluster cannot sign (FAILED_PRECONDITION).
    CannotSign,
    Unauthorized,
    Forbidden,
    RateLimited,
    Failed,
}

impl SignOutcome {
    fn name(self) -> &'static str {
        match self {
            SignOutcome::Signed => "signed",
            SignOutcome::Invalid => "invalid",
            SignOutcome::Denied => "denied",
            SignOutcome::CannotSign => "cannot_sign",
            SignOutcome::Unauthorized => "unauthorized",
            SignOutcome::Forbidden => "forbidden",
            SignOutcome::RateLimited => "rate_limited",
            SignOutcome::Failed => "failed",
        }
    }
}

const STATUS_SPAN: usize = 500; // 100..=599

/// When a cluster's rotation policy next has something to do with these
/// keys. Given by the caller (`serve` passes the rotation module's answer), so
/// neither this module nor the HTTP layer that renders it drives rotation.
pub type NextDue = fn(&[KeyRecord], &ClusterConfig) -> SystemTime;

pub struct Metrics {
    registry: Registry,
    next_due: NextDue,
    requests: IntCounterVec,
    /// requests_total children by route and status, made on first use: the
    /// hot path then bumps an atomic without hashing labels.
    request_cells: Vec<Vec<OnceLock<IntCounter>>>,
    minted: IntCounterVec,
    signed: IntCounterVec,
    /// Caught up at each scrape from requests_total's 304 children, so a
    /// conditional GET bumps one counter, as a 200 does.
    not_modified: IntCounterVec,
    key_age: IntGaugeVec,
    next_rotation: IntGaugeVec,
    reload_last_success: IntGauge,
    reload_failing: IntGauge,
    rotation_failing: IntGauge,
    tls_last_success: IntGaugeVec,
    connections_open: IntGaugeVec,
    connections_accepted: IntCounterVec,
    connections_waited: IntCounterVec,
    /// Scrapes reset and refill the state gauges: one at a time.
    rendering: std::sync::Mutex<()>,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("workload_issuer")
}

impl Metrics {
    pub fn new(next_due: NextDue) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            opts(
                "http_requests_total",
                "HTTP requests answered, by route and status code.",
            ),
            &["route", "status"],
        )?;
        let minted = IntCounterVec::new(
            opts(
                "tokens_minted_total",
                "TokenRequests by cluster and outcome (issued, unauthorized, forbidden, rate_limited, invalid, failed).",
            ),
            &["cluster", "outcome"],
        )?;
        let signed = IntCounterVec::new(
            opts(
                "external_sign_requests_total",
                "Requests to sign kube-apiserver's tokens (external signer), by cluster, \
                 where they came in (socket, api) and outcome (signed, invalid, denied, \
                 cannot_sign, unauthorized, forbidden, rate_limited, failed).",
            ),
            &["cluster", "via", "outcome"],
        )?;
        let not_modified = IntCounterVec::new(
            opts(
                "not_modified_total",
                "Conditional GETs answered 304 Not Modified, by document.",
            ),
            &["document"],
        )?;
        let key_age = IntGaugeVec::new(
            opts(
                "key_age_seconds",
                "Age of each published key since it was created, by cluster, state (next, current, retired) and kid.",
            ),
            &["cluster", "state", "kid"],
        )?;
        let next_rotation = IntGaugeVec::new(
            opts(
                "next_rotation_seconds",
                "Seconds until the cluster's rotation policy next has something to do (negative: overdue).",
            ),
            &["cluster"],
        )?;
        let reload_last_success = IntGauge::with_opts(opts(
            "key_reload_last_success_timestamp_seconds",
            "Unix time of the last pass that loaded every cluster's key set.",
        ))?;
        let reload_failing = IntGauge::with_opts(opts(
            "key_reload_failing_clusters",
            "Clusters whose last key-set reload failed (their previous keys keep serving).",
        ))?;
        let rotation_failing = IntGauge::with_opts(opts(
            "key_rotation_failing_clusters",
            "Clusters whose last rotation step failed (a full disk, a refused write): their current keys keep serving.",
        ))?;
        let tls_last_success = IntGaugeVec::new(
            opts(
                "tls_reload_last_success_timestamp_seconds",
                "Unix time the listener's TLS files were last loaded successfully.",
            ),
            &["listener"],
        )?;
        let connections_open = IntGaugeVec::new(
            opts("connections_open", "Open connections, by listener."),
            &["listener"],
        )?;
        let connections_accepted = IntCounterVec::new(
            opts(
                "connections_accepted_total",
                "Connections accepted since start, by listener.",
            ),
            &["listener"],
        )?;
        let connections_waited = IntCounterVec::new(
            opts(
                "connections_limited_total",
                "Times a listener reached max_connections and new connections waited, since start.",
            ),
            &["listener"],
        )?;
        let build = IntGaugeVec::new(
            opts("build_info", "Always 1; the version in a label."),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for c in [
            &requests,
            &minted,
            &signed,
            &not_modified,
            &connections_accepted,
            &connections_waited,
        ] {
            registry.register(Box::new(c.clone()))?;
        }
        for g in [
            &key_age,
            &next_rotation,
            &tls_last_success,
            &connections_open,
            &build,
        ] {
            registry.register(Box::new(g.clone()))?;
        }
        registry.register(Box::new(reload_last_success.clone()))?;
        registry.register(Box::new(reload_failing.clone()))?;
        registry.register(Box::new(rotation_failing.clone()))?;
        let request_cells = Route::ALL
            .iter()
            .map(|_| (0..STATUS_SPAN).map(|_| OnceLock::new()).collect())
            .collect();
        Ok(Metrics {
            registry,
            next_due,
            requests,
            request_cells,
            minted,
            signed,
            not_modified,
            key_age,
            next_rotation,
            reload_last_success,
            reload_failing,
            rotation_failing,
            tls_last_success,
            connections_open,
            connections_accepted,
            connections_waited,
            rendering: std::sync::Mutex::new(()),
        })
    }

    pub fn request(&self, route: Route, status: u16) {
        match self.request_cell(route, status) {
            Some(cell) => cell
                .get_or_init(|| {
                    self.requests
                        .with_label_values(&[route.name(), &status.to_string()])
                })
                .inc(),
            None => self
                .requests
                .with_label_values(&[route.name(), &status.to_string()])
                .inc(),
        }
    }

    /// The slot of a route and status for its cached requests_total child
    /// (statuses from 100, STATUS_SPAN of them).
    fn request_cell(&self, route: Route, status: u16) -> Option<&OnceLock<IntCounter>> {
        usize::from(status)
            .checked_sub(100)
            .and_then(|i| self.request_cells[route.index()].get(i))
    }

    pub fn mint(&self, cluster: &str, outcome: MintOutcome) {
        self.minted
            .with_label_values(&[cluster, outcome.name()])
            .inc();
    }

    pub fn sign(&self, cluster: &str, via: SignVia, outcome: SignOutcome) {
        self.signed
            .with_label_values(&[cluster, via.name(), outcome.name()])
            .inc();
    }

    /// The exposition text, with the state gauges computed now.
    pub fn render(&self, issuers: &Issuers, health: &Health, now: SystemTime) -> Vec<u8> {
        let _one_at_a_time = self.rendering.lock().unwrap_or_else(|e| e.into_inner());
        let secs = |t: SystemTime| match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        let now_s = secs(now);
        self.key_age.reset();
        self.next_rotation.reset();
        for cluster in issuers.all() {
            let published = cluster.published();
            let records: Vec<_> = published
                .keys
                .keys()
                .iter()
                .map(|k| k.record.clone())
                .collect();
            for r in &records {
                if let Ok(created) = humantime::parse_rfc3339(&r.created) {
                    self.key_age
                        .with_label_values(&[cluster.id(), r.state.as_str(), &r.kid])
                        .set(now_s - secs(created));
                }
            }
            let due = (self.next_due)(&records, &cluster.config);
            self.next_rotation
                .with_label_values(&[cluster.id()])
                .set(secs(due) - now_s);
        }
        for route in [Route::Discovery, Route::Jwks] {
            let answered = self.request_cell(route, 304).and_then(OnceLock::get);
            if let Some(answered) = answered {
                let c = self.not_modified.with_label_values(&[route.name()]);
                c.inc_by(answered.get().saturating_sub(c.get()));
            }
        }
        self.reload_last_success
            .set(health.reload.last_good.load(Ordering::Relaxed) as i64);
        self.reload_failing
            .set(health.reload.failing.lock().map_or(0, |f| f.len() as i64));
        self.rotation_failing.set(
            health
                .reload
                .rotation_failing
                .lock()
                .map_or(0, |f| f.len() as i64),
        );
        for l in health.listeners() {
            let open = l.stats.open.load(Ordering::Relaxed);
            self.connections_open
                .with_label_values(&[l.name])
                .set(i64::try_from(open).unwrap_or(i64::MAX));
            // The listener counts; the counters catch up with it.
            for (counter, total) in [
                (&self.connections_accepted, &l.stats.accepted),
                (&self.connections_waited, &l.stats.waited),
            ] {
                let c = counter.with_label_values(&[l.name]);
                c.inc_by(total.load(Ordering::Relaxed).saturating_sub(c.get()));
            }
            if let Some(tls) = &l.tls {
                self.tls_last_success
                    .with_label_values(&[l.name])
                    .set(tls.last_good.load(Ordering::Relaxed) as i64);
            }
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for these metric types.
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out);
        if let Some(store) = health.store.get() {
            store_gauges(&mut out, store);
        }
        out
    }
}

/// The etcd store's gauges, on a server that has one.
fn store_gauges(out: &mut Vec<u8>, store: &crate::etcd::StoreStatus) {
    use std::io::Write as _;
    let up = i32::from(store.up.load(Ordering::Acquire));
    let leader = i32::from(store.leader.load(Ordering::Acquire));
    let _ = write!(
        out,
        "# HELP workload_issuer_store_up Whether the store (etcd) answered the last probe.\n\
         # TYPE workload_issuer_store_up gauge\n\
         workload_issuer_store_up {up}\n\
         # HELP workload_issuer_store_leader Whether this replica holds the store's rotation lease (runs rotation steps).\n\
         # TYPE workload_issuer_store_leader gauge\n\
         workload_issuer_store_leader {leader}\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_indexes_its_own_place_in_the_per_route_tables() {
        for (i, route) in Route::ALL.iter().enumerate() {
            assert_eq!(route.index(), i, "{route:?}");
        }
    }
}
