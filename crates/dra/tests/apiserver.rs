//! A stand-in Kubernetes API server over real HTTP, so the kube-rs code (`KubeSlices`,
//! `KubeClaims`) is exercised, not only compiled. It serves exactly what the plugin calls,
//! with the API server's semantics where the plugin relies on them:
//!
//! - `GET /apis/resource.k8s.io/v1/resourceslices?fieldSelector=spec.driver=D,spec.nodeName=N`
//!   (a list with the collection's resourceVersion; an unsupported field selector is 400), and
//!   with `watch=true&resourceVersion=V` a watch: newline-delimited `WatchEvent` JSON
//!   (`ADDED`, `MODIFIED`, `DELETED`) of every change after `V`, then as they happen;
//! - `POST .../resourceslices` (409 AlreadyExists on a taken name), `PUT .../resourceslices/{name}`
//!   (409 Conflict on a stale `metadata.resourceVersion`, 404 on a missing one), `DELETE
//!   .../resourceslices/{name}`;
//! - `GET /apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims/{name}` and
//!   `GET /api/v1/nodes/{name}`.
//!
//! Errors are `metav1.Status` bodies. Every object received is validated against the
//! upstream OpenAPI schema document in strict mode (`schema.rs`) and by `validate.rs`'s rules,
//! and refused with 422 Invalid when it fails, as the API server refuses it.

#![expect(
    clippy::result_large_err,
    reason = "the error is the HTTP answer itself, made once per refused request"
)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use crate::openapi::{Kind, schema_problems};

/// One change to a slice, as a watch reports it.
#[derive(Debug, Clone)]
struct Event {
    version: u64,
    kind: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct Store {
    slices: BTreeMap<String, Value>,
    claims: HashMap<(String, String), Value>,
    nodes: HashMap<String, Value>,
    version: u64,
    events: Vec<Event>,
    /// Every request, `METHOD path?query`.
    requests: Vec<String>,
    /// Writes accepted (create, replace, delete).
    writes: usize,
    /// Objects refused with 422.
    refused: Vec<String>,
    /// A slice another writer changes right before the next replace of it.
    interfere: Option<String>,
}

struct Inner {
    store: Mutex<Store>,
    /// The store's version after every change (watches wait on it).
    version: watch::Sender<u64>,
    /// Turns true when the server stops (watches end).
    stopping: watch::Sender<bool>,
}

impl Inner {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The stand-in API server, serving on a loopback TCP port until dropped.
pub struct ApiServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.inner.stopping.send_replace(true);
        self.task.abort();
    }
}

const SLICES: &str = "/apis/resource.k8s.io/v1/resourceslices";

/// A `metav1.Status` failure.
fn status(code: StatusCode, reason: &str, message: &str, name: &str, kind: &str) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": { "name": name, "group": "resource.k8s.io", "kind": kind },
        "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

fn ok(object: &Value) -> Response {
    (StatusCode::OK, axum::Json(object.clone())).into_response()
}

impl ApiServer {
    /// Starts serving on `127.0.0.1:<free port>`.
    pub async fn start() -> Self {
        let (version, _) = watch::channel(0);
        let (stopping, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            store: Mutex::new(Store::default()),
            version,
            stopping,
        });
        let app = Router::new()
            .route(SLICES, get(list_or_watch).post(create))
            .route(
                &format!("{SLICES}/{{name}}"),
                get(get_slice).put(replace).delete(delete),
            )
            .route(
                "/apis/resource.k8s.io/v1/namespaces/{namespace}/resourceclaims/{name}",
                get(get_claim),
            )
            .route("/api/v1/nodes/{name}", get(get_node))
            .fallback(|uri: axum::http::Uri| async move {
                status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("the stand-in does not serve {uri}"),
                    "",
                    "",
                )
            })
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&inner),
                record,
            ))
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { inner, addr, task }
    }

    /// Its address, `http://127.0.0.1:<port>`, for a kubeconfig.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube-rs client of this server, as the plugin builds one (plain HTTP here).
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Stores `claim` as the scheduler left it.
    pub fn put_claim(&self, claim: &ResourceClaim) {
        let value = serde_json::to_value(claim).unwrap();
        assert_eq!(
            schema_problems(Kind::ResourceClaim, &value),
            Vec::<String>::new()
        );
        let key = (
            claim.metadata.namespace.clone().unwrap(),
            claim.metadata.name.clone().unwrap(),
        );
        self.inner.store().claims.insert(key, value);
    }

    /// Stores a Node named `name` with uid `uid`.
    pub fn put_node(&self, name: &str, uid: &str) {
        let node = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": { "name": name, "uid": uid, "resourceVersion": "1" },
        });
        self.inner.store().nodes.insert(name.to_owned(), node);
    }

    /// The slices stored, by name.
    pub fn slices(&self) -> Vec<ResourceSlice> {
        self.inner
            .store()
            .slices
            .values()
            .map(|v| serde_json::from_value(v.clone()).unwrap())
            .collect()
    }

    /// Writes accepted so far.
    pub fn writes(&self) -> usize {
        self.inner.store().writes
    }

    /// The requests served so far, `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.inner.store().requests.clone()
    }

    /// The objects refused with 422 so far (their problems).
    pub fn refused(&self) -> Vec<String> {
        self.inner.store().refused.clone()
    }

    /// Changes slice `name` as another writer would (an operator's edit): `edit` applied to
    /// its JSON, a new resourceVersion, a MODIFIED event.
    pub fn edit_slice(&self, name: &str, edit: impl FnOnce(&mut Value)) {
        let mut store = self.inner.store();
        let mut object = store.slices.get(name).cloned().unwrap();
        edit(&mut object);
        store.commit("MODIFIED", name, Some(object), &self.inner.version);
    }

    /// Deletes slice `name` as another writer would (an operator, the garbage collector).
    pub fn delete_slice(&self, name: &str) {
        self.inner
            .store()
            .commit("DELETED", name, None, &self.inner.version);
    }

    /// Makes the next replace of slice `name` meet a change by another writer made since
    /// the publisher listed it (a new resourceVersion), so it is answered 409 Conflict.
    pub fn interfere_with_next_replace(&self, name: &str) {
        self.inner.store().interfere = Some(name.to_owned());
    }
}

impl Store {
    /// Stores `object` under `name` (or removes it) at a new resourceVersion, and records
    /// the event.
    fn commit(
        &mut self,
        kind: &'static str,
        name: &str,
        object: Option<Value>,
        notify: &watch::Sender<u64>,
    ) -> Value {
        self.version += 1;
        let version = self.version;
        let object = match object {
            Some(mut object) => {
                object["metadata"]["resourceVersion"] = json!(version.to_string());
                self.slices.insert(name.to_owned(), object.clone());
                object
            }
            None => {
                let mut object = self.slices.remove(name).unwrap();
                object["metadata"]["resourceVersion"] = json!(version.to_string());
                object
            }
        };
        self.events.push(Event {
            version,
            kind,
            object: object.clone(),
        });
        notify.send_replace(version);
        object
    }
}

async fn record(
    State(inner): State<Arc<Inner>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let line = format!(
        "{} {}",
        request.method(),
        request
            .uri()
            .path_and_query()
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    inner.store().requests.push(line);
    next.run(request).await
}

/// The field selector's `spec.driver` and `spec.nodeName` (both optional); anything else is
/// refused as the API server refuses a field it has no selector for.
fn selector(query: &HashMap<String, String>) -> Result<Vec<(String, String)>, Response> {
    let Some(fields) = query.get("fieldSelector") else {
        return Ok(Vec::new());
    };
    fields
        .split(',')
        .filter(|f| !f.is_empty())
        .map(|f| {
            let (field, value) = f.split_once('=').unwrap_or((f, ""));
            match field {
                "spec.driver" | "spec.nodeName" | "spec.pool.name" => {
                    Ok((field.to_owned(), value.to_owned()))
                }
                _ => Err(status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &format!("field label not supported: {field}"),
                    "",
                    "resourceslices",
                )),
            }
        })
        .collect()
}

fn selected(object: &Value, fields: &[(String, String)]) -> bool {
    fields.iter().all(|(field, value)| {
        let found = match field.as_str() {
            "spec.driver" => &object["spec"]["driver"],
            "spec.nodeName" => &object["spec"]["nodeName"],
            _ => &object["spec"]["pool"]["name"],
        };
        found.as_str() == Some(value.as_str())
    })
}

async fn list_or_watch(
    State(inner): State<Arc<Inner>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let fields = match selector(&query) {
        Ok(fields) => fields,
        Err(refused) => return refused,
    };
    if query.get("watch").map(String::as_str) == Some("true") {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        return watch_slices(inner, fields, from);
    }
    let store = inner.store();
    let items: Vec<Value> = store
        .slices
        .values()
        .filter(|s| selected(s, &fields))
        .cloned()
        .collect();
    ok(&json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSliceList",
        "metadata": { "resourceVersion": store.version.to_string() },
        "items": items,
    }))
}

/// A watch from `from`: the recorded events after it, then each new one, one JSON object a
/// line. Version 0 means "from now, starting with the objects there are" (ADDED for each).
fn watch_slices(inner: Arc<Inner>, fields: Vec<(String, String)>, from: u64) -> Response {
    let (lines, body) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let mut versions = inner.version.subscribe();
    let mut stopping = inner.stopping.subscribe();
    tokio::spawn(async move {
        let mut seen = from;
        if from == 0 {
            let (initial, version) = {
                let store = inner.store();
                let initial: Vec<Value> = store
                    .slices
                    .values()
                    .filter(|s| selected(s, &fields))
                    .cloned()
                    .collect();
                (initial, store.version)
            };
            for object in initial {
                let line = json!({ "type": "ADDED", "object": object });
                if lines
                    .send(Ok(Bytes::from(format!("{line}\n"))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            seen = version;
        }
        loop {
            // Marked seen before reading the log: a change committed after the read wakes
            // the wait below. The log and its version are read under one lock, so no event
            // is skipped.
            versions.borrow_and_update();
            let new: Vec<Event> = {
                let store = inner.store();
                let new = store
                    .events
                    .iter()
                    .filter(|e| e.version > seen && selected(&e.object, &fields))
                    .cloned()
                    .collect();
                seen = seen.max(store.version);
                new
            };
            for event in new {
                let line = json!({ "type": event.kind, "object": event.object });
                if lines
                    .send(Ok(Bytes::from(format!("{line}\n"))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            tokio::select! {
                changed = versions.changed() => if changed.is_err() { return },
                _ = stopping.wait_for(|s| *s) => return,
                () = lines.closed() => return,
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(
            tokio_stream::wrappers::ReceiverStream::new(body),
        ))
        .unwrap()
}

/// Parses and validates a ResourceSlice body, as the API server does before storing it:
/// 422 Invalid on a schema or validation failure.
fn received_slice(inner: &Inner, body: &Bytes) -> Result<(Value, String), Response> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("cannot decode: {e}"),
            "",
            "resourceslices",
        )
    })?;
    let name = value["metadata"]["name"].as_str().unwrap_or("").to_owned();
    let mut problems = schema_problems(Kind::ResourceSlice, &value);
    if problems.is_empty() {
        match serde_json::from_value::<ResourceSlice>(value.clone()) {
            Ok(slice) => problems.extend(plugboard_dra::slice_problems(&slice)),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if !problems.is_empty() {
        let message = format!(
            "ResourceSlice.resource.k8s.io {name:?} is invalid: {}",
            problems.join("; ")
        );
        inner.store().refused.push(message.clone());
        return Err(status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            &message,
            &name,
            "ResourceSlice",
        ));
    }
    Ok((value, name))
}

async fn create(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    let (mut value, name) = match received_slice(&inner, &body) {
        Ok(received) => received,
        Err(refused) => return refused,
    };
    let mut store = inner.store();
    if store.slices.contains_key(&name) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("resourceslices.resource.k8s.io {name:?} already exists"),
            &name,
            "resourceslices",
        );
    }
    if value["metadata"].get("resourceVersion").is_some() {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "resourceVersion should not be set on objects to be created",
            &name,
            "resourceslices",
        );
    }
    value["metadata"]["uid"] = json!(format!("uid-{name}"));
    value["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    store.writes += 1;
    let stored = store.commit("ADDED", &name, Some(value), &inner.version);
    (StatusCode::CREATED, axum::Json(stored)).into_response()
}

async fn replace(
    State(inner): State<Arc<Inner>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let (mut value, body_name) = match received_slice(&inner, &body) {
        Ok(received) => received,
        Err(refused) => return refused,
    };
    if body_name != name {
        return status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the name of the object does not match the name on the URL",
            &name,
            "resourceslices",
        );
    }
    let mut store = inner.store();
    if store.interfere.as_deref() == Some(name.as_str()) {
        store.interfere = None;
        if let Some(current) = store.slices.get(&name).cloned() {
            store.commit("MODIFIED", &name, Some(current), &inner.version);
        }
    }
    let Some(current) = store.slices.get(&name) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("resourceslices.resource.k8s.io {name:?} not found"),
            &name,
            "resourceslices",
        );
    };
    let sent = value["metadata"]["resourceVersion"].as_str().unwrap_or("");
    if sent.is_empty() {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
            &name,
            "ResourceSlice",
        );
    }
    if current["metadata"]["resourceVersion"].as_str() != Some(sent) {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on resourceslices.resource.k8s.io {name:?}: the object has been modified; please apply your changes to the latest version and try again"
            ),
            &name,
            "resourceslices",
        );
    }
    value["metadata"]["uid"] = current["metadata"]["uid"].clone();
    value["metadata"]["creationTimestamp"] = current["metadata"]["creationTimestamp"].clone();
    store.writes += 1;
    let stored = store.commit("MODIFIED", &name, Some(value), &inner.version);
    ok(&stored)
}

async fn delete(State(inner): State<Arc<Inner>>, Path(name): Path<String>) -> Response {
    let mut store = inner.store();
    if !store.slices.contains_key(&name) {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("resourceslices.resource.k8s.io {name:?} not found"),
            &name,
            "resourceslices",
        );
    }
    store.writes += 1;
    let gone = store.commit("DELETED", &name, None, &inner.version);
    ok(&gone)
}

async fn get_slice(State(inner): State<Arc<Inner>>, Path(name): Path<String>) -> Response {
    match inner.store().slices.get(&name) {
        Some(slice) => ok(slice),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("resourceslices.resource.k8s.io {name:?} not found"),
            &name,
            "resourceslices",
        ),
    }
}

async fn get_claim(
    State(inner): State<Arc<Inner>>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    match inner.store().claims.get(&(namespace, name.clone())) {
        Some(claim) => ok(claim),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("resourceclaims.resource.k8s.io {name:?} not found"),
            &name,
            "resourceclaims",
        ),
    }
}

async fn get_node(State(inner): State<Arc<Inner>>, Path(name): Path<String>) -> Response {
    match inner.store().nodes.get(&name) {
        Some(node) => ok(node),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("nodes {name:?} not found"),
            &name,
            "nodes",
        ),
    }
}
