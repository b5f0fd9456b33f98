//! The admin API: clusters created, listed, shown, recreated and deleted at
//! run time (`/admin/v1/clusters`), for API clients with `admin = true`.
//!
//! The operations are `keys::registry`'s, on the keys dir every server
//! sharing it reads; after one, the server's own cluster set is brought up
//! to date before the answer (`Admin::resync`), so a 201 means served here.
//! They touch files and may generate an RSA key, so they run on the blocking
//! pool, never on the workers answering JWKS and tokens.
//!
//! Only on the API listener, for authenticated clients with `admin = true`.
//! Errors are the plain JSON shape with the field they are about:
//! `{"error": "Bad Request", "message": "...", "field": "id"}`.
//!
//! Imports `keys::registry` and `keys::store` (never `keys::rotation`) and
//! `issuer`; nothing of `serve`.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::routing::{any, get, post, MethodRouter};
use axum::Router;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::token::{authenticate, read_body};
use super::{uncached, AppState, Face};
use crate::config::{runtime_cluster, Origin};
use crate::error::AppError;
use crate::issuer::auth::ApiClient;
use crate::k8s::names::is_dns_label;
use crate::keys::registry::{AdminError, Registry, Seen, View};
use crate::keys::store::{KeyRecord, KeySet, KeyState, KeyStore};
use crate::metrics::{Metrics, Route};

/// What the admin API works with beyond the live clusters.
pub struct Admin {
    pub store: KeyStore,
    /// Replaced when the config is reloaded.
    pub settings: ArcSwap<AdminSettings>,
    resync: mpsc::UnboundedSender<Resync>,
    /// The other end, until whoever keeps the cluster set takes it.
    requests: std::sync::Mutex<Option<ResyncRequests>>,
    /// The registry's generation the served set was loaded at, and its
    /// files as read then, for whoever keeps the cluster set to take.
    pub loaded: std::sync::Mutex<Option<(u64, Seen)>>,
}

/// The settings of the config the admin API follows.
#[derive(Clone, Debug)]
pub struct AdminSettings {
    /// The base of a created cluster's default issuer URL.
    pub public_url: String,
    /// The config file, named when a cluster declared there is refused.
    pub file: Option<PathBuf>,
}

/// The requests for a resync, for whoever keeps the cluster set (`serve`):
/// answer each once the set is up to date with the keys dir.
pub type ResyncRequests = mpsc::UnboundedReceiver<Resync>;

/// One request to bring the served set up to date.
pub struct Resync {
    /// The clusters just changed here (only their files need reading), or
    /// `None` for all of them.
    pub ids: Option<Vec<String>>,
    /// Answered once done.
    pub done: oneshot::Sender<()>,
}

impl Admin {
    pub fn new(store: KeyStore, settings: AdminSettings, loaded: (u64, Seen)) -> Admin {
        let (tx, rx) = mpsc::unbounded_channel();
        Admin {
            store,
            settings: ArcSwap::from_pointee(settings),
            resync: tx,
            requests: std::sync::Mutex::new(Some(rx)),
            loaded: std::sync::Mutex::new(Some(loaded)),
        }
    }

    /// The resync requests, for whoever keeps the cluster set: once.
    pub fn take_requests(&self) -> Option<ResyncRequests> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Brings this server's cluster set up to date with the keys dir (the
    /// registry and the key sets), returning once it is.
    pub async fn resync(&self) {
        self.send(None).await;
    }

    /// As [`Admin::resync`], after a change of this one cluster made here:
    /// only its files are read (the registry's other changes are seen at
    /// the next poll).
    pub async fn resync_for(&self, id: &str) {
        self.send(Some(vec![id.to_owned()])).await;
    }

    /// As [`Admin::resync_for`], for several clusters changed elsewhere
    /// (the etcd store's watch).
    pub async fn resync_ids(&self, ids: Vec<String>) {
        self.send(Some(ids)).await;
    }

    async fn send(&self, ids: Option<Vec<String>>) {
        let (done, rx) = oneshot::channel();
        if self.resync.send(Resync { ids, done }).is_ok() {
            let _ = rx.await;
        }
    }
}

/// The collection: `GET` lists, `POST` creates.
pub const CLUSTERS_PATH: &str = "/admin/v1/clusters";
const ONE_PATH: &str = "/admin/v1/clusters/{id}";
const RECREATE_PATH: &str = "/admin/v1/clusters/{id}/recreate";

/// The admin API's routes on a listener serving `face`, every answer counted
/// under `Route::Admin`. The public face answers 404, as it does for the
/// issuance API: the admin API stays on the API listener.
pub(super) fn routes(metrics: Arc<Metrics>, face: Face) -> Router<Arc<AppState>> {
    let router = if face == Face::Public {
        Router::new()
            .route(CLUSTERS_PATH, any(not_on_this_listener))
            .route(ONE_PATH, any(not_on_this_listener))
            .route(RECREATE_PATH, any(not_on_this_listener))
    } else {
        Router::new()
            .route(
                CLUSTERS_PATH,
                get(list).post(create).fallback(allowing("GET, HEAD, POST")),
            )
            .route(
                ONE_PATH,
                get(show)
                    .delete(delete)
                    .fallback(allowing("GET, HEAD, DELETE")),
            )
            .route(RECREATE_PATH, post(recreate).fallback(allowing("POST")))
    };
    router.layer(axum::middleware::map_response(move |response: Response| {
        metrics.request(Route::Admin, response.status().as_u16());
        std::future::ready(response)
    }))
}

async fn not_on_this_listener() -> AppError {
    AppError::plain(
        StatusCode::NOT_FOUND,
        "the admin API is not served on this listener; use the API listener (api.listen)",
    )
}

/// A 405 naming the methods a path takes (RFC 9110 §15.5.6).
fn allowing(allow: &'static str) -> MethodRouter<Arc<AppState>> {
    any(move |method: Method| async move {
        AppError::plain(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed here; use {allow}"),
        )
        .with_allow(allow)
    })
}

/// The admin API's store and the client asking, once it is known to be an
/// admin: 404 without an admin API, 401 without a credential, 403 for a
/// client without `admin = true`.
fn admit(state: &AppState, parts: &Parts) -> Result<(Arc<Admin>, Arc<ApiClient>), AppError> {
    let admin = state
        .admin
        .clone()
        .ok_or_else(|| AppError::plain(StatusCode::NOT_FOUND, "the admin API is not enabled"))?;
    let client = authenticate(state, parts).map_err(AppError::plain_shaped)?;
    if !client.admin {
        tracing::info!(
            client = client.name,
            "admin API request refused: not an admin client"
        );
        return Err(AppError::plain(
            StatusCode::FORBIDDEN,
            format!(
                "API client {} may not manage clusters; set admin = true in its [[api_clients]] \
                 table to allow it",
                serde_json::to_string(&client.name).unwrap_or_default()
            ),
        ));
    }
    Ok((admin, client))
}

/// With the etcd store: a change is refused (503) while etcd does not
/// answer; it would be made on this replica alone.
fn store_answers(state: &AppState) -> Result<(), AppError> {
    let Some(replica) = &state.store else {
        return Ok(());
    };
    let status = &replica.status;
    if status.up.load(std::sync::atomic::Ordering::Acquire) && status.following() {
        return Ok(());
    }
    let why = status
        .problem()
        .map_or_else(String::new, |(summary, why)| format!("{summary}: {why}"));
    Err(AppError::plain(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("cluster changes wait: {why}"),
    ))
}

/// Commits the cluster's change (with the etcd store, so every replica
/// serves it), then brings this server's cluster set up to date with it,
/// before the answer.
async fn commit_and_serve(state: &AppState, admin: &Admin, id: &str) -> Result<(), AppError> {
    let Some(replica) = &state.store else {
        admin.resync_for(id).await;
        return Ok(());
    };
    match replica.commit(vec![id.to_owned()]).await {
        Ok(c) if c.conflicts.is_empty() => {
            admin.resync_for(id).await;
            Ok(())
        }
        Ok(_) => {
            // The working copy holds etcd's version of it again.
            admin.resync_for(id).await;
            Err(AppError::plain(
                StatusCode::CONFLICT,
                format!(
                    "another replica or the CLI changed cluster {id:?} at the same time: this \
                 change was dropped and theirs stands; look at the cluster and try again"
                ),
            ))
        }
        Err(e) => {
            tracing::error!(cluster = id, error = %e, "admin API: the change could not be committed to etcd");
            Err(AppError::plain(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the change is made on this replica but is not in etcd yet ({e}); it is \
                     committed when etcd answers, unless another replica changes the cluster first"
                ),
            ))
        }
    }
}

/// [`admit`] for a change to the cluster `id`: an id no cluster could have
/// is unknown, and with the etcd store a change waits while it does not
/// answer.
fn admit_change(
    state: &AppState,
    parts: &Parts,
    id: &str,
) -> Result<(Arc<Admin>, Arc<ApiClient>), AppError> {
    let admitted = admit(state, parts)?;
    checked_id(id)?;
    store_answers(state)?;
    Ok(admitted)
}

/// What a refused or failed cluster operation answers.
fn refusal(e: AdminError) -> AppError {
    let field = e.field().filter(|f| !f.is_empty()).map(str::to_owned);
    let status = match &e {
        AdminError::Invalid(_) => StatusCode::BAD_REQUEST,
        AdminError::Taken { .. } | AdminError::FromFile { .. } => StatusCode::CONFLICT,
        AdminError::Unknown(_) => StatusCode::NOT_FOUND,
        AdminError::Store(store) => {
            tracing::error!(error = %store, "admin API: the keys dir could not be changed");
            return AppError::plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the keys dir could not be changed: {store}"),
            );
        }
    };
    let error = AppError::plain(status, e.to_string());
    match field {
        Some(field) => error.with_field(field),
        None => error,
    }
}

/// Runs a registry operation on the blocking pool: it reads and writes
/// files and may generate an RSA key (100 ms and more), which must not hold
/// up an async worker serving JWKS and tokens.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AdminError> + Send + 'static,
) -> Result<T, AppError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(refusal),
        Err(e) => {
            tracing::error!(error = %e, "admin API: a cluster operation did not complete");
            Err(AppError::plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the cluster operation did not complete",
            ))
        }
    }
}

/// An id in a URL that no cluster could have (not a DNS label) is unknown,
/// and never reaches the keys dir as a path.
fn checked_id(id: &str) -> Result<(), AppError> {
    if is_dns_label(id) {
        Ok(())
    } else {
        Err(refusal(AdminError::Unknown(id.to_owned())))
    }
}

/// The body's type: JSON, or none at all (read as JSON, as a TokenRequest's).
fn json_body(headers: &HeaderMap) -> Result<(), AppError> {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return match headers.contains_key(header::CONTENT_TYPE) {
            true => Err(unsupported("more than one Content-Type header")),
            false => Ok(()),
        };
    };
    let text = value.to_str().unwrap_or("\u{fffd}");
    let essence = text.split(';').next().unwrap_or("").trim();
    if essence.is_empty() || essence.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    Err(unsupported(&format!(
        "the body's content type {} is not supported",
        serde_json::to_string(text).unwrap_or_default()
    )))
}

fn unsupported(what: &str) -> AppError {
    AppError::plain(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!("{what}; send the cluster's settings as application/json"),
    )
}

fn json(status: StatusCode, value: &impl Serialize) -> Result<Response, AppError> {
    let mut body = serde_json::to_vec_pretty(value).map_err(|e| {
        tracing::error!(error = %e, "admin API: encoding an answer failed");
        AppError::plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the answer could not be encoded",
        )
    })?;
    body.push(b'\n'); // the last line ends, for curl in a terminal
    Ok(uncached(status, "application/json", body))
}

fn records(keys: &KeySet) -> Vec<KeyRecord> {
    keys.keys().iter().map(|k| k.record.clone()).collect()
}

/// One line of the list.
#[derive(Serialize)]
struct Summary<'a> {
    id: &'a str,
    issuer: &'a str,
    origin: &'static str,
    algorithm: String,
    current_kid: String,
    keys: usize,
}

/// `GET /admin/v1/clusters`: every cluster this server serves now.
async fn list(State(state): State<Arc<AppState>>, parts: Parts) -> Result<Response, AppError> {
    admit(&state, &parts)?;
    let issuers = state.issuers.load();
    let published: Vec<_> = issuers.all().iter().map(|c| c.published()).collect();
    let clusters: Vec<Summary> = issuers
        .all()
        .iter()
        .zip(&published)
        .map(|(c, p)| {
            let current = p
                .keys
                .keys()
                .iter()
                .find(|k| k.record.state == KeyState::Current)
                .map(|k| &k.record);
            Summary {
                id: c.id(),
                issuer: &c.config.issuer,
                origin: origin_name(c.config.origin),
                algorithm: current.map_or_else(
                    || c.config.key_spec.algorithm().as_str().to_owned(),
                    |r| r.alg.clone(),
                ),
                current_kid: current.map_or_else(String::new, |r| r.kid.clone()),
                keys: p.keys.keys().len(),
            }
        })
        .collect();
    json(StatusCode::OK, &Listing { clusters })
}

#[derive(Serialize)]
struct Listing<'a> {
    clusters: Vec<Summary<'a>>,
}

/// The answer to a delete.
#[derive(Serialize)]
struct Deleted {
    id: String,
    deleted: bool,
    removed_kids: Vec<String>,
}

fn origin_name(origin: Origin) -> &'static str {
    match origin {
        Origin::File => "file",
        Origin::Runtime => "runtime",
    }
}

/// `POST /admin/v1/clusters`: creates a cluster from the fields of a
/// `[[clusters]]` table; 201 once this server serves it.
async fn create(
    State(state): State<Arc<AppState>>,
    parts: Parts,
    body: Body,
) -> Result<Response, AppError> {
    let (admin, client) = admit(&state, &parts)?;
    store_answers(&state)?;
    json_body(&parts.headers)?;
    let bytes = read_body(&parts.headers, body)
        .await
        .map_err(AppError::plain_shaped)?;
    let settings: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        AppError::plain(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON ({e}); send the cluster's settings as a JSON object"),
        )
    })?;
    let known = state.issuers.load_full();
    let now = state.clock.now();
    let (entry, cluster, keys) = blocking({
        let admin = admin.clone();
        move || {
            let public_url = admin.settings.load().public_url.clone();
            Registry::new(&admin.store).create(&settings, &public_url, &*known, now)
        }
    })
    .await?;
    commit_and_serve(&state, &admin, &cluster.id).await?;
    let records = records(&keys);
    tracing::info!(
        cluster = cluster.id,
        issuer = cluster.issuer,
        client = client.name,
        kids = ?records.iter().map(|r| r.kid.as_str()).collect::<Vec<_>>(),
        "cluster created through the admin API"
    );
    let mut response = json(
        StatusCode::CREATED,
        &View::new(&cluster, Some(&entry), &records),
    )?;
    if let Ok(location) = HeaderValue::from_str(&format!("{CLUSTERS_PATH}/{}", cluster.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /admin/v1/clusters/{id}`: one cluster as served now, with its keys.
async fn show(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Response, AppError> {
    let (admin, _) = admit(&state, &parts)?;
    checked_id(&id)?;
    let cluster = state
        .issuers
        .load()
        .by_id(&id)
        .cloned()
        .ok_or_else(|| refusal(AdminError::Unknown(id.clone())))?;
    let entry = match cluster.config.origin {
        Origin::File => None,
        Origin::Runtime => blocking(move || Ok(Registry::new(&admin.store).get(&id)?)).await?,
    };
    let records = records(&cluster.published().keys);
    json(
        StatusCode::OK,
        &View::new(&cluster.config, entry.as_ref(), &records),
    )
}

/// `DELETE /admin/v1/clusters/{id}`: a cluster created at run time, with
/// its keys; a config file's cluster is refused (409 naming the file).
async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Response, AppError> {
    let (admin, client) = admit_change(&state, &parts, &id)?;
    let known = state.issuers.load_full();
    let kids = blocking({
        let (admin, id) = (admin.clone(), id.clone());
        move || {
            let file = admin.settings.load().file.clone();
            Registry::new(&admin.store).remove(&id, &*known, file.as_deref())
        }
    })
    .await?;
    commit_and_serve(&state, &admin, &id).await?;
    tracing::info!(
        cluster = id,
        client = client.name,
        removed_kids = ?kids,
        "cluster deleted through the admin API: its documents are gone and the tokens its \
         keys signed no longer verify"
    );
    json(
        StatusCode::OK,
        &Deleted {
            id,
            deleted: true,
            removed_kids: kids,
        },
    )
}

/// `POST /admin/v1/clusters/{id}/recreate`: the same issuer with a new
/// cluster behind it. Every old key goes at once; new ones sign.
async fn recreate(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    parts: Parts,
) -> Result<Response, AppError> {
    let (admin, client) = admit_change(&state, &parts, &id)?;
    let live = state.issuers.load().by_id(&id).map(|c| c.config.clone());
    if live.as_ref().is_some_and(|c| c.publish_only) {
        return Err(AppError::plain(
            StatusCode::CONFLICT,
            format!(
                "cluster \"{id}\" is publish_only: its own kube-apiserver signs its tokens and \
                 its keys are imported with `keys import`, never generated here"
            ),
        ));
    }
    let now = state.clock.now();
    let (old, keys, config, entry) = blocking({
        let (admin, id) = (admin.clone(), id.clone());
        move || {
            let registry = Registry::new(&admin.store);
            let config = match live {
                Some(c) => c,
                // Created on another server sharing the keys dir, not yet
                // seen here.
                None => {
                    let public_url = admin.settings.load().public_url.clone();
                    let entry = registry.get(&id)?.ok_or(AdminError::Unknown(id.clone()))?;
                    runtime_cluster(&entry.settings, &public_url).map_err(AdminError::Invalid)?
                }
            };
            let (old, keys) = registry.recreate(&config, now)?;
            let entry = registry.get(&id)?;
            Ok((old, keys, config, entry))
        }
    })
    .await?;
    commit_and_serve(&state, &admin, &id).await?;
    let records = records(&keys);
    tracing::info!(
        cluster = id,
        client = client.name,
        removed_kids = ?old,
        new_kids = ?records.iter().map(|r| r.kid.as_str()).collect::<Vec<_>>(),
        "cluster recreated through the admin API: its old keys are gone from the JWKS and the \
         tokens they signed no longer verify"
    );
    json(
        StatusCode::OK,
        &View::new(&config, entry.as_ref(), &records),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::http::Request;
    use serde_json::{json, Value};
    use tower::ServiceExt as _;

    use super::*;
    use crate::clock::ManualClock;
    use crate::config::{Config, Overrides};
    use crate::http::{app, app_for};
    use crate::issuer::auth::ApiClients;
    use crate::issuer::Issuers;

    const FILE: &str = "/etc/workload-issuer/config.toml";

    struct Fixture {
        state: AppState,
        dir: tempfile::TempDir,
        admin_token: String,
        ci_token: String,
        /// How many resyncs were answered.
        resyncs: Arc<AtomicUsize>,
    }

    /// A server's state with one config cluster, `demo` (ES256), an admin
    /// client and a client without `admin`. Its resyncs are answered as the
    /// server answers them: the live set rebuilt from the config and the
    /// registry in the keys dir.
    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "listen = \"127.0.0.1:0\"\npublic_url = \"https://oidc.example.com\"\n\
             keys_dir = {:?}\n\
             [[clusters]]\nid = \"demo\"\nalgorithm = \"ES256\"\n\
             [[api_clients]]\nname = \"platform\"\ntoken_file = \"admin.token\"\n\
             generate = true\nadmin = true\nclusters = [\"*\"]\n\
             [[api_clients]]\nname = \"ci\"\ntoken_file = \"ci.token\"\ngenerate = true\nclusters = [\"*\"]\n",
            dir.path().display().to_string()
        );
        let config = Config::parse("test", &text, &Overrides::default()).unwrap();
        let store = KeyStore::new(dir.path());
        let (clients, _) = ApiClients::load(&config.api_clients, dir.path()).unwrap();
        let clock = ManualClock::new(std::time::UNIX_EPOCH);
        let mut state = AppState::new(
            live(&store, &config),
            clients,
            |records, c| crate::keys::policy::next_due(records, c.key_spec, &c.rotation),
            clock,
        )
        .unwrap();
        let settings = AdminSettings {
            public_url: config.public_url.clone(),
            file: Some(FILE.into()),
        };
        let admin = Admin::new(KeyStore::new(dir.path()), settings, (0, Seen::default()));
        let mut requests = admin.take_requests().unwrap();
        state.admin = Some(Arc::new(admin));
        let resyncs = Arc::new(AtomicUsize::new(0));
        let (issuers, count) = (state.issuers.clone(), resyncs.clone());
        tokio::spawn(async move {
            while let Some(request) = requests.recv().await {
                issuers.store(Arc::new(live(&store, &config)));
                count.fetch_add(1, Ordering::SeqCst);
                let _ = request.done.send(());
            }
        });
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        Fixture {
            admin_token: read("admin.token").trim().to_owned(),
            ci_token: read("ci.token").trim().to_owned(),
            state,
            dir,
            resyncs,
        }
    }

    /// The config's clusters and the registry's, with their keys.
    fn live(store: &KeyStore, config: &Config) -> Issuers {
        let mut clusters = config.clusters.clone();
        let (runtime, bad) = Registry::new(store).clusters(&config.public_url).unwrap();
        assert!(bad.is_empty(), "{bad:?}");
        clusters.extend(runtime.into_iter().map(|(_, c)| c));
        Issuers::new(
            clusters
                .into_iter()
                .map(|c| {
                    let (keys, _) = store
                        .load_or_create(&c.id, c.key_spec, std::time::UNIX_EPOCH)
                        .unwrap();
                    (c, Arc::new(keys))
                })
                .collect(),
        )
    }

    impl Fixture {
        async fn send(
            &self,
            method: Method,
            path: &str,
            token: Option<&str>,
            body: Option<Value>,
        ) -> (StatusCode, HeaderMap, Value) {
            send(app(self.state.clone()), method, path, token, body).await
        }

        async fn admin(
            &self,
            method: Method,
            path: &str,
            body: Option<Value>,
        ) -> (StatusCode, Value) {
            let (status, _, body) = self
                .send(method, path, Some(&self.admin_token.clone()), body)
                .await;
            (status, body)
        }

        fn kids_on_disk(&self, id: &str) -> Vec<String> {
            KeyStore::new(self.dir.path())
                .read_manifest(id)
                .unwrap()
                .map(|m| m.keys.into_iter().map(|k| k.kid).collect())
                .unwrap_or_default()
        }
    }

    async fn send(
        router: Router,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let response = router.oneshot(request.body(body).unwrap()).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)));
        (parts.status, parts.headers, value)
    }

    fn message(body: &Value) -> &str {
        body["message"].as_str().unwrap_or_default()
    }

    #[tokio::test]
    async fn a_created_cluster_is_stored_with_its_own_keys_and_answered_201_once_served() {
        let f = fixture().await;
        let (status, h, body) = f
            .send(
                Method::POST,
                CLUSTERS_PATH,
                Some(&f.admin_token),
                Some(json!({"id": "ws-1", "algorithm": "ES256", "max_token_lifetime": "2h"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(h[header::LOCATION], "/admin/v1/clusters/ws-1");
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        assert_eq!(body["issuer"], "https://oidc.example.com/c/ws-1");
        assert_eq!(body["origin"], "runtime");
        assert_eq!(body["max_token_lifetime"], "2h");
        assert_eq!(body["keys"][0]["state"], "current");
        let kid = body["keys"][0]["kid"].as_str().unwrap();
        assert!(f.kids_on_disk("ws-1").iter().any(|k| k == kid));
        let store = KeyStore::new(f.dir.path());
        assert!(Registry::new(&store).get("ws-1").unwrap().is_some());
        assert_eq!(
            f.resyncs.load(Ordering::SeqCst),
            1,
            "answered after the resync"
        );

        let (status, body) = f.admin(Method::GET, "/admin/v1/clusters/ws-1", None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["keys"][0]["kid"], kid);
        assert!(body["created"].is_string(), "{body}");
        let (status, body) = f.admin(Method::GET, CLUSTERS_PATH, None).await;
        assert_eq!(status, StatusCode::OK);
        let listed = body["clusters"].as_array().unwrap();
        let ws = listed.iter().find(|c| c["id"] == "ws-1").unwrap();
        assert_eq!(ws["current_kid"], kid);
        assert_eq!(ws["algorithm"], "ES256");
        assert_eq!(ws["keys"], 2, "current and standby");
        let demo = listed.iter().find(|c| c["id"] == "demo").unwrap();
        assert_eq!(demo["origin"], "file");
    }

    #[tokio::test]
    async fn bad_settings_are_400_naming_the_field() {
        let f = fixture().await;
        for (body, field, words) in [
            (
                json!({"id": "ws-1", "colour": "red"}),
                "colour",
                "unknown field",
            ),
            (
                json!({"id": "Bad_Id", "algorithm": "ES256"}),
                "id",
                "must be a DNS label",
            ),
            (
                json!({"id": "ws-1", "algorithm": "HS256"}),
                "algorithm",
                "\"HS256\" is not supported",
            ),
        ] {
            let (status, body) = f.admin(Method::POST, CLUSTERS_PATH, Some(body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(body["error"], "Bad Request");
            assert_eq!(body["field"], field, "{body}");
            assert!(message(&body).contains(words), "{body}");
        }
        let (status, _, body) = send(
            app(f.state.clone()),
            Method::POST,
            CLUSTERS_PATH,
            Some(&f.admin_token),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message(&body).starts_with("the body is not JSON"), "{body}");
        assert!(f.kids_on_disk("ws-1").is_empty(), "nothing was created");
        assert_eq!(f.resyncs.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_body_of_another_type_is_415() {
        let f = fixture().await;
        let request = Request::post(CLUSTERS_PATH)
            .header(header::AUTHORIZATION, format!("Bearer {}", f.admin_token))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("id=ws-1"))
            .unwrap();
        let response = app(f.state.clone()).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[tokio::test]
    async fn an_id_or_issuer_path_already_taken_is_409_naming_the_field() {
        let f = fixture().await;
        let ws = json!({"id": "ws-1", "algorithm": "ES256"});
        assert_eq!(
            f.admin(Method::POST, CLUSTERS_PATH, Some(ws.clone()))
                .await
                .0,
            StatusCode::CREATED
        );
        let kids = f.kids_on_disk("ws-1");
        let (status, body) = f.admin(Method::POST, CLUSTERS_PATH, Some(ws)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["field"], "id");
        assert!(message(&body).contains("\"ws-1\" already exists"), "{body}");
        assert_eq!(
            f.kids_on_disk("ws-1"),
            kids,
            "the first cluster's keys stay"
        );

        let demo = json!({"id": "demo", "algorithm": "ES256"});
        let (status, body) = f.admin(Method::POST, CLUSTERS_PATH, Some(demo)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(
            message(&body).contains("declared in the config file"),
            "{body}"
        );

        let same_path = json!({"id": "other", "issuer": "https://elsewhere.example.com/c/demo"});
        let (status, body) = f.admin(Method::POST, CLUSTERS_PATH, Some(same_path)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["field"], "issuer");
        assert!(
            message(&body).contains("cluster \"demo\"'s issuer"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn a_client_without_admin_is_403_and_no_credential_is_401() {
        let f = fixture().await;
        let ws = json!({"id": "ws-1", "algorithm": "ES256"});
        let (status, _, body) = f
            .send(
                Method::POST,
                CLUSTERS_PATH,
                Some(&f.ci_token),
                Some(ws.clone()),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(message(&body).contains("set admin = true"), "{body}");
        let (status, h, body) = f.send(Method::POST, CLUSTERS_PATH, None, Some(ws)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"], "Unauthorized");
        assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer");
        let (status, _, _) = f
            .send(Method::GET, CLUSTERS_PATH, Some("not-a-token"), None)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(f.kids_on_disk("ws-1").is_empty());
    }

    #[tokio::test]
    async fn an_unknown_cluster_is_404_and_an_id_no_cluster_could_have_too() {
        let f = fixture().await;
        for (method, path) in [
            (Method::GET, "/admin/v1/clusters/nope"),
            (Method::DELETE, "/admin/v1/clusters/nope"),
            (Method::POST, "/admin/v1/clusters/nope/recreate"),
            (Method::GET, "/admin/v1/clusters/Bad_Id"),
            (Method::DELETE, "/admin/v1/clusters/..%2Fdemo"),
            (Method::POST, "/admin/v1/clusters/..%2F..%2Fx/recreate"),
        ] {
            let (status, body) = f.admin(method.clone(), path, None).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {body}");
            assert!(message(&body).starts_with("no cluster has id"), "{body}");
        }
        assert_eq!(f.kids_on_disk("demo").len(), 2, "demo's keys stay");
    }

    #[tokio::test]
    async fn deleting_a_config_files_cluster_is_409_naming_the_file() {
        let f = fixture().await;
        let (status, body) = f
            .admin(Method::DELETE, "/admin/v1/clusters/demo", None)
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(message(&body).contains(FILE), "{body}");
        assert_eq!(f.kids_on_disk("demo").len(), 2, "its keys stay");
    }

    #[tokio::test]
    async fn a_deleted_cluster_leaves_the_registry_and_its_keys_the_store() {
        let f = fixture().await;
        let ws = json!({"id": "ws-1", "algorithm": "ES256"});
        assert_eq!(
            f.admin(Method::POST, CLUSTERS_PATH, Some(ws)).await.0,
            StatusCode::CREATED
        );
        let kids = f.kids_on_disk("ws-1");
        let (status, body) = f
            .admin(Method::DELETE, "/admin/v1/clusters/ws-1", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["removed_kids"], json!(kids));
        assert!(f.kids_on_disk("ws-1").is_empty());
        assert!(!f.dir.path().join("ws-1").exists());
        assert_eq!(f.resyncs.load(Ordering::SeqCst), 2);
        let (status, _) = f.admin(Method::GET, "/admin/v1/clusters/ws-1", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_recreated_cluster_has_new_keys_only() {
        let f = fixture().await;
        let ws = json!({"id": "ws-1", "algorithm": "ES256"});
        assert_eq!(
            f.admin(Method::POST, CLUSTERS_PATH, Some(ws)).await.0,
            StatusCode::CREATED
        );
        for id in ["ws-1", "demo"] {
            let old = f.kids_on_disk(id);
            let path = format!("/admin/v1/clusters/{id}/recreate");
            let (status, body) = f.admin(Method::POST, &path, None).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let new = f.kids_on_disk(id);
            assert_eq!(new.len(), 2, "current and standby");
            assert!(old.iter().all(|k| !new.contains(k)), "{old:?} {new:?}");
            let shown: Vec<&str> = body["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap())
                .collect();
            assert!(new.iter().all(|k| shown.contains(&k.as_str())), "{body}");
        }
        let (_, body) = f.admin(Method::GET, "/admin/v1/clusters/ws-1", None).await;
        assert!(body["recreated"].is_string(), "{body}");
    }

    #[tokio::test]
    async fn other_methods_are_405_with_allow() {
        let f = fixture().await;
        for (method, path, allow) in [
            (Method::PUT, CLUSTERS_PATH, "GET, HEAD, POST"),
            (Method::POST, "/admin/v1/clusters/demo", "GET, HEAD, DELETE"),
            (Method::GET, "/admin/v1/clusters/demo/recreate", "POST"),
        ] {
            let (status, h, body) = f
                .send(method.clone(), path, Some(&f.admin_token), None)
                .await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_eq!(h[header::ALLOW], allow);
            assert!(message(&body).contains(allow), "{body}");
        }
    }

    #[tokio::test]
    async fn the_public_listener_and_a_server_without_admin_answer_404() {
        let f = fixture().await;
        let router = app_for(f.state.clone(), Face::Public);
        let (status, _, body) = send(
            router,
            Method::GET,
            CLUSTERS_PATH,
            Some(&f.admin_token),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(message(&body).contains("use the API listener"), "{body}");
        let mut state = f.state.clone();
        state.admin = None;
        let (status, _, body) = send(
            app(state),
            Method::GET,
            CLUSTERS_PATH,
            Some(&f.admin_token),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(message(&body), "the admin API is not enabled");
    }

    #[tokio::test]
    async fn admin_requests_are_counted_under_their_route() {
        let f = fixture().await;
        f.admin(Method::GET, CLUSTERS_PATH, None).await;
        let text = f.state.metrics.render(
            &f.state.issuers.load(),
            &f.state.health,
            std::time::UNIX_EPOCH,
        );
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.lines()
                .any(|l| l.contains("route=\"admin\"") && l.contains("status=\"200\"")),
            "{text}"
        );
    }
}
