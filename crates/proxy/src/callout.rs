//! What reaches a worker's VMs from outside a request: HTTP callout responses from the
//! clusters, and shared-queue notifications from other workers.
//!
//! Each worker thread has an inbox (an unbounded channel, bounded in practice by the callout
//! and queue quotas) drained by a task on its own runtime, which delivers into its own VMs and
//! then wakes the streams they may have resumed. A callout runs as a task on the worker that
//! dispatched it, over that worker's own connection pool (as Envoy's per-worker pools), and its
//! response comes back to that worker's inbox, whichever VM it belongs to.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use tokio::sync::mpsc::UnboundedSender;
use wasmux::abi::services::{Callouts, GrpcAction, GrpcCallout, HttpCallout, InMemoryQueues, QueueOwner, SharedQueues};
use wasmux::abi::{Quotas, Refused, Status};
use wasmux::{HeaderMap, HttpCallResponse};

use crate::proxy::Cluster;

/// Something for a worker's VMs.
#[derive(Debug)]
pub(crate) enum Delivery {
    /// The response to HTTP callout `token` of VM `group` (`None`: the call failed).
    Http {
        /// The VM.
        group: usize,
        /// Its token.
        token: u32,
        /// The response.
        response: Option<HttpCallResponse>,
    },
    /// A queue owned by one of this worker's VMs got an item (at most one waits in the inbox:
    /// the worker looks at every queue it owns when it takes it).
    Queue,
}

/// A worker's inbox, and the worker's connection pool for callouts.
#[derive(Clone)]
pub(crate) struct Inbox {
    tx: UnboundedSender<Delivery>,
    connector: Arc<Connector>,
    /// A [`Delivery::Queue`] is in the inbox, not taken yet: enqueues add no other.
    queue_pending: Arc<AtomicBool>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox").field("queue_pending", &self.queue_pending).finish_non_exhaustive()
    }
}

impl Inbox {
    /// An inbox, and the flag the worker clears when it takes a queue notification.
    pub(crate) fn new(tx: UnboundedSender<Delivery>) -> (Self, Arc<AtomicBool>) {
        let flag = Arc::new(AtomicBool::new(false));
        (Self { tx, connector: Arc::new(Connector::new(None)), queue_pending: flag.clone() }, flag)
    }

    fn send(&self, d: Delivery) {
        // The worker is gone when its runtime shuts down: nothing to deliver then.
        let _ = self.tx.send(d);
    }

    fn notify_queue(&self) {
        if !self.queue_pending.swap(true, Ordering::AcqRel) {
            self.send(Delivery::Queue);
        }
    }
}

thread_local! {
    /// This thread's worker inboxes, by filter-chain set.
    static INBOXES: RefCell<Vec<(u64, Inbox)>> = const { RefCell::new(Vec::new()) };
}

/// Registers this thread's inbox for a filter-chain set.
pub(crate) fn set_inbox(uid: u64, inbox: Inbox) {
    INBOXES.with(|i| i.borrow_mut().push((uid, inbox)));
}

/// Forgets this thread's inbox for a filter-chain set.
pub(crate) fn remove_inbox(uid: u64) {
    let _ = INBOXES.try_with(|i| i.borrow_mut().retain(|(u, _)| *u != uid));
}

/// This thread's inbox for a filter-chain set.
fn inbox(uid: u64) -> Option<Inbox> {
    INBOXES.with(|i| i.borrow().iter().find(|(u, _)| *u == uid).map(|(_, inbox)| inbox.clone()))
}

/// HTTP callouts to the proxy's clusters, for the plugins of one VM.
pub struct ClusterCallouts {
    uid: u64,
    group: usize,
    clusters: Arc<Vec<Cluster>>,
    max_timeout: Duration,
    /// The largest response body taken from an upstream; past it the call fails.
    max_body: usize,
}

impl std::fmt::Debug for ClusterCallouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCallouts").field("group", &self.group).field("clusters", &self.clusters.len()).finish()
    }
}

impl ClusterCallouts {
    /// Callouts of VM `group` of filter-chain set `uid`.
    pub(crate) fn new(
        uid: u64,
        group: usize,
        clusters: Arc<Vec<Cluster>>,
        max_timeout: Duration,
        max_body: usize,
    ) -> Self {
        Self { uid, group, clusters, max_timeout, max_body }
    }
}

impl Callouts for ClusterCallouts {
    /// Envoy's answers: `BAD_ARGUMENT` for a cluster it does not know, `INTERNAL_FAILURE`
    /// when the call cannot be started.
    fn http_call(&self, call: &HttpCallout) -> Result<(), Status> {
        let cluster = self.clusters.iter().find(|c| c.name == call.upstream).ok_or(Status::BadArgument)?;
        let addr = cluster.pick().ok_or(Status::BadArgument)?;
        let inbox = inbox(self.uid).ok_or(Status::InternalFailure)?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| Status::InternalFailure)?;
        let timeout = if call.timeout.is_zero() { self.max_timeout } else { call.timeout.min(self.max_timeout) };
        let (connector, connect_timeout, group, token, max_body) =
            (inbox.connector.clone(), cluster.connect_timeout, self.group, call.token, self.max_body);
        let call = call.clone();
        handle.spawn(async move {
            let exchange = request(&connector, addr, connect_timeout, &call, max_body);
            let response = match tokio::time::timeout(timeout, exchange).await {
                Ok(Ok(r)) => Some(r),
                Ok(Err(e)) => {
                    tracing::debug!(target: "wasmux::proxy", upstream = %call.upstream, "callout failed: {e}");
                    None
                }
                Err(_) => None,
            };
            inbox.send(Delivery::Http { group, token, response });
        });
        Ok(())
    }

    /// gRPC callouts are not served yet: refused as Envoy refuses a call it cannot start.
    fn grpc_open(&self, _call: &GrpcCallout) -> Result<(), Status> {
        Err(Status::InternalFailure)
    }

    fn grpc_action(&self, _token: u32, _action: &GrpcAction) -> Result<(), Status> {
        Err(Status::BadArgument)
    }
}

/// One HTTP/1.1 exchange with an endpoint: the callout's pseudo-headers make the request line
/// and `host`. A response body over `max_body` bytes fails the call.
async fn request(
    connector: &Connector,
    addr: SocketAddr,
    connect_timeout: Duration,
    call: &HttpCallout,
    max_body: usize,
) -> pingora::Result<HttpCallResponse> {
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(connect_timeout);
    let (mut session, _reused) = connector.get_http_session(&peer).await?;
    let method = call.headers.get(b":method").unwrap_or(b"GET");
    let path = call.headers.get(b":path").unwrap_or(b"/");
    let mut req = RequestHeader::build(method, path, None)?;
    if let Some(authority) = call.headers.get(b":authority") {
        req.insert_header(http::header::HOST, authority)?;
    }
    for (name, v) in crate::proxy::regular_headers(&call.headers) {
        req.append_header(name, v)?;
    }
    req.insert_header(http::header::CONTENT_LENGTH, call.body.len().to_string())?;
    session.write_request_header(Box::new(req)).await?;
    if !call.body.is_empty() {
        session.write_request_body(Bytes::from(call.body.clone()), true).await?;
    }
    session.finish_request_body().await?;
    session.read_response_header().await?;
    while session.response_header().is_some_and(|h| h.status.is_informational()) {
        session.read_response_header().await?;
    }
    let mut headers = HeaderMap::new();
    if let Some(h) = session.response_header() {
        headers.add(b":status", h.status.as_str().as_bytes());
        for (k, v) in &h.headers {
            headers.add(k.as_str().as_bytes(), v.as_bytes());
        }
    }
    let mut body = Vec::new();
    while let Some(chunk) = session.read_response_body().await? {
        if body.len().saturating_add(chunk.len()) > max_body {
            return Err(pingora::Error::explain(
                pingora::ErrorType::ReadError,
                format!("the response body is larger than {max_body} bytes (quota max_body_bytes)"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    connector.release_http_session(session, &peer, None).await;
    Ok(HttpCallResponse { headers, body, trailers: HeaderMap::new() })
}

/// Shared queues whose owners are woken on their own worker when any worker enqueues.
#[derive(Debug, Default)]
pub struct NotifyingQueues {
    uid: u64,
    inner: InMemoryQueues,
    owners: Mutex<HashMap<u32, Inbox>>,
}

impl NotifyingQueues {
    /// Queues of filter-chain set `uid`.
    pub(crate) fn new(uid: u64) -> Self {
        Self { uid, ..Self::default() }
    }
}

impl SharedQueues for NotifyingQueues {
    fn register(&self, vm_id: &str, name: &[u8], owner: QueueOwner, quotas: &Quotas) -> Result<u32, Refused> {
        let id = self.inner.register(vm_id, name, owner, quotas)?;
        // Registered from a callback on the owner's worker: its inbox is this thread's.
        let mut owners = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
        match inbox(self.uid) {
            Some(inbox) => owners.insert(id, inbox),
            None => owners.remove(&id),
        };
        Ok(id)
    }

    fn resolve(&self, vm_id: &str, name: &[u8]) -> Option<u32> {
        self.inner.resolve(vm_id, name)
    }

    fn enqueue(&self, id: u32, item: &[u8], quotas: &Quotas) -> Result<(), Refused> {
        self.inner.enqueue(id, item, quotas)?;
        if let Some(inbox) = self.owners.lock().unwrap_or_else(PoisonError::into_inner).get(&id) {
            inbox.notify_queue();
        }
        Ok(())
    }

    fn has_room(&self, id: u32, len: u64, quotas: &Quotas) -> Result<(), Refused> {
        self.inner.has_room(id, len, quotas)
    }

    fn dequeue(&self, id: u32) -> Result<Vec<u8>, Status> {
        self.inner.dequeue(id)
    }

    fn take_ready(&self, vm_uid: u64) -> Vec<(u32, u32)> {
        self.inner.take_ready(vm_uid)
    }
}
