//! What reaches a worker's VMs from outside a request: HTTP callout responses and gRPC call
//! and stream events from the clusters, and shared-queue notifications from other workers.
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
    /// Something for gRPC call or stream `token` of VM `group`.
    Grpc {
        /// The VM.
        group: usize,
        /// Its token.
        token: u32,
        /// What arrived.
        event: GrpcEvent,
        /// Returned when the event has been delivered.
        _credit: tokio::sync::OwnedSemaphorePermit,
    },
    /// A queue owned by one of this worker's VMs got an item (at most one waits in the inbox:
    /// the worker looks at every queue it owns when it takes it).
    Queue,
}

/// What a gRPC call or stream brings back, in the order a filter sees it.
#[derive(Debug)]
pub(crate) enum GrpcEvent {
    /// A stream's response headers.
    InitialMetadata(HeaderMap),
    /// A stream's message.
    Message(Vec<u8>),
    /// A unary call's response (the call is over).
    Response(Vec<u8>),
    /// A stream's trailers.
    TrailingMetadata(HeaderMap),
    /// The end: gRPC status and message (a unary call that failed, or any stream).
    Close(i32, String),
    /// Messages the filter sent were written (they no longer count against its quota).
    Sent(usize),
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
    /// The callouts this worker runs: (filter-chain set, VM, token) → the task.
    static CALLS: RefCell<HashMap<(u64, usize, u32), Call>> = RefCell::new(HashMap::new());
}

/// A running callout task.
struct Call {
    task: tokio::task::AbortHandle,
    /// A gRPC stream the filter has not closed: where its messages go.
    commands: Option<UnboundedSender<GrpcCommand>>,
}

/// Notes a callout task spawned on this worker.
fn track(key: (u64, usize, u32), task: tokio::task::AbortHandle, commands: Option<UnboundedSender<GrpcCommand>>) {
    CALLS.with(|c| c.borrow_mut().insert(key, Call { task, commands }));
}

/// Forgets a callout task that ended (its own entry only).
fn untrack(key: (u64, usize, u32)) {
    let Some(id) = tokio::task::try_id() else { return };
    let _ = CALLS.try_with(|c| {
        let mut calls = c.borrow_mut();
        if calls.get(&key).is_some_and(|call| call.task.id() == id) {
            calls.remove(&key);
        }
    });
}

/// Stops the callouts of VM `group` of set `uid` (of every VM of the set: `None`), whose
/// tokens mean nothing any more: the VM was reloaded (a new VM counts tokens from 1 again) or
/// the worker stops.
pub(crate) fn abort_calls(uid: u64, group: Option<usize>) {
    let _ = CALLS.try_with(|c| {
        c.borrow_mut().retain(|&(u, g, _), call| {
            let stop = u == uid && group.is_none_or(|x| x == g);
            if stop {
                call.task.abort();
            }
            !stop
        });
    });
}

/// A filter's action on a stream, for its task.
enum GrpcCommand {
    /// A message, and whether it ends the request stream.
    Send(Vec<u8>, bool),
    /// `proxy_grpc_close` on a stream: half-close the request stream; read on, quietly.
    Close,
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

    /// A callout's timeout: what the filter asked for, capped; none asked is the cap.
    fn timeout(&self, asked: Duration) -> Duration {
        if asked.is_zero() { self.max_timeout } else { asked.min(self.max_timeout) }
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
        let timeout = self.timeout(call.timeout);
        let (connector, connect_timeout, group, token, max_body) =
            (inbox.connector.clone(), cluster.connect_timeout, self.group, call.token, self.max_body);
        let call = call.clone();
        let key = (self.uid, group, token);
        let task = handle.spawn(async move {
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
            untrack(key);
        });
        track(key, task.abort_handle(), None);
        Ok(())
    }

    /// Envoy's answers: a name that is neither a cluster nor a `GrpcService` naming one is
    /// `PARSE_FAILURE`; a call that cannot start is `INTERNAL_FAILURE`. The call or stream runs
    /// over HTTP/2 (cleartext, prior knowledge) to the cluster, on this worker.
    fn grpc_open(&self, call: &GrpcCallout) -> Result<(), Status> {
        let name = call.cluster();
        let cluster = self.clusters.iter().find(|c| c.name == name).ok_or(Status::ParseFailure)?;
        let inbox = inbox(self.uid).ok_or(Status::InternalFailure)?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| Status::InternalFailure)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let timeout = (!call.stream).then(|| self.timeout(call.timeout));
        let exchange = GrpcExchange {
            uid: self.uid,
            credits: Arc::new(tokio::sync::Semaphore::new(GRPC_EVENTS_IN_FLIGHT)),
            addr: cluster.pick(),
            connect_timeout: cluster.connect_timeout,
            call: call.clone(),
            max_body: self.max_body,
            group: self.group,
            inbox,
        };
        let task = handle.spawn(exchange.run(rx, timeout)).abort_handle();
        track((self.uid, self.group, call.token), task, call.stream.then_some(tx));
        Ok(())
    }

    /// As Envoy: a message goes to an open stream; `proxy_grpc_close` half-closes a stream
    /// (whose task reads on, delivering nothing more) and cancels a call; `proxy_grpc_cancel`
    /// resets either.
    fn grpc_action(&self, token: u32, action: &GrpcAction) -> Result<(), Status> {
        let key = (self.uid, self.group, token);
        CALLS.with(|c| {
            let mut calls = c.borrow_mut();
            let Some(call) = calls.get_mut(&key) else { return };
            match (action, call.commands.take()) {
                (GrpcAction::Send { message, end_stream }, Some(tx)) => {
                    let _ = tx.send(GrpcCommand::Send(message.clone(), *end_stream));
                    call.commands = Some(tx);
                }
                (GrpcAction::Close, Some(tx)) => {
                    let _ = tx.send(GrpcCommand::Close);
                }
                (GrpcAction::Send { .. }, None) => {}
                (GrpcAction::Close | GrpcAction::Cancel, _) => {
                    call.task.abort();
                    calls.remove(&key);
                }
            }
        });
        // The VM tracks which tokens are open: an action on a call whose task already ended is
        // still the filter's to make.
        Ok(())
    }
}

/// gRPC's length-prefixed message: no compression, 4-byte big-endian length.
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(message.len() + 5);
    out.push(0);
    out.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

/// The gRPC status of an HTTP status that is not 200 (the gRPC HTTP mapping).
fn grpc_status_of_http(status: u16) -> i32 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502..=504 => 14,
        _ => 2,
    }
}

/// `grpc-message` is percent-encoded.
fn percent_decode(v: &[u8]) -> String {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (v[i], v.get(i + 1).copied().and_then(hex), v.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The metadata of a header map (pseudo-headers left out), as filters see it.
fn metadata(h: &http::HeaderMap) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in h {
        m.add(k.as_str().as_bytes(), v.as_bytes());
    }
    m
}

/// The status and message in a header map carrying `grpc-status`.
fn status_in(h: &http::HeaderMap) -> Option<(i32, String)> {
    let status = h.get("grpc-status")?.to_str().ok()?.trim().parse::<i32>().unwrap_or(2);
    let message = h.get("grpc-message").map(|v| percent_decode(v.as_bytes())).unwrap_or_default();
    Some((status, message))
}

/// How many events of one gRPC call or stream may wait in the worker's inbox.
const GRPC_EVENTS_IN_FLIGHT: usize = 16;

/// Hands an event of gRPC call `token` to the worker, once the call has a credit for it (the
/// credit comes back when the worker has delivered it).
async fn send_event(inbox: &Inbox, credits: &Arc<tokio::sync::Semaphore>, group: usize, token: u32, event: GrpcEvent) {
    if let Ok(credit) = credits.clone().acquire_owned().await {
        inbox.send(Delivery::Grpc { group, token, event, _credit: credit });
    }
}

/// One gRPC call or stream, run as a task on the worker that opened it.
struct GrpcExchange {
    uid: u64,
    /// Events of this call waiting in the inbox, at most [`GRPC_EVENTS_IN_FLIGHT`]: a cluster
    /// that streams faster than the filter takes its messages is read no faster.
    credits: Arc<tokio::sync::Semaphore>,
    addr: Option<SocketAddr>,
    connect_timeout: Duration,
    call: GrpcCallout,
    max_body: usize,
    group: usize,
    inbox: Inbox,
}

impl GrpcExchange {
    async fn deliver(&self, event: GrpcEvent) {
        send_event(&self.inbox, &self.credits, self.group, self.call.token, event).await;
    }

    /// Runs the exchange and always ends it for the filter: a unary call with its response or
    /// a close, a stream with a close.
    async fn run(self, rx: tokio::sync::mpsc::UnboundedReceiver<GrpcCommand>, timeout: Option<Duration>) {
        let exchange = self.exchange(rx);
        let end = match timeout {
            Some(t) => tokio::time::timeout(t, exchange).await.unwrap_or_else(|_| Err((4, "deadline exceeded".into()))),
            None => exchange.await,
        };
        match end {
            Ok(Some(response)) => self.deliver(GrpcEvent::Response(response)).await,
            Ok(None) => {}
            Err((status, message)) => self.deliver(GrpcEvent::Close(status, message)).await,
        }
        untrack((self.uid, self.group, self.call.token));
    }

    /// `Ok(Some(message))`: a unary call's response; `Ok(None)`: a stream that ended (its close
    /// delivered); `Err`: the status and message that close the call.
    async fn exchange(
        &self,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<GrpcCommand>,
    ) -> Result<Option<Vec<u8>>, (i32, String)> {
        let unavailable = |e: Box<pingora::Error>| (14, format!("upstream connect error: {e}"));
        let addr = self.addr.ok_or((14, "no healthy upstream".to_string()))?;
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.set_http_version(2, 2);
        let (session, _reused) = self.inbox.connector.get_http_session(&peer).await.map_err(unavailable)?;
        let pingora::protocols::http::client::HttpSession::H2(mut h2) = session else {
            return Err((14, "the cluster does not speak HTTP/2".into()));
        };
        let call = &self.call;
        let path = format!("/{}/{}", call.service, call.method);
        let mut req = RequestHeader::build("POST", path.as_bytes(), None).map_err(unavailable)?;
        req.set_version(http::Version::HTTP_2);
        for (name, v) in crate::proxy::regular_headers(&call.initial_metadata) {
            req.append_header(name, v).map_err(|e| (13, e.to_string()))?;
        }
        // Envoy's default authority for a cluster is its name.
        let authority =
            call.initial_metadata.get(b":authority").map_or_else(|| call.cluster().as_bytes().to_vec(), <[u8]>::to_vec);
        req.insert_header(http::header::HOST, authority).map_err(|e| (13, e.to_string()))?;
        req.insert_header(http::header::CONTENT_TYPE, "application/grpc").map_err(|e| (13, e.to_string()))?;
        req.insert_header(http::header::TE, "trailers").map_err(|e| (13, e.to_string()))?;
        if !call.stream && !call.timeout.is_zero() {
            req.insert_header("grpc-timeout", format!("{}m", call.timeout.as_millis()))
                .map_err(|e| (13, e.to_string()))?;
        }
        h2.write_request_header(Box::new(req), false).map_err(unavailable)?;
        let mut writer = h2.take_request_body_writer().ok_or((13, "no request stream".to_string()))?;
        if !call.stream {
            writer.send_data(grpc_frame(&call.message), true).map_err(|e| (14, e.to_string()))?;
        }
        // The request stream: the filter's messages as they come, while the response is read.
        let group = self.group;
        let token = call.token;
        let inbox = self.inbox.clone();
        let credits = self.credits.clone();
        let sender = async move {
            while let Some(cmd) = rx.recv().await {
                let (mut data, end, sent) = match cmd {
                    GrpcCommand::Send(m, end) => (grpc_frame(&m), end, true),
                    GrpcCommand::Close => (Bytes::new(), true, false),
                };
                // Written as the peer's flow-control window opens, so no more than the window
                // waits in the connection's buffers; the rest stays counted against the filter's
                // quota (`max_grpc_pending_sends`) until then.
                loop {
                    let mut chunk = data.clone();
                    if !data.is_empty() {
                        writer.reserve_capacity(data.len());
                        let mut granted = writer.capacity();
                        while granted == 0 {
                            match std::future::poll_fn(|cx| writer.poll_capacity(cx)).await {
                                Some(Ok(n)) => granted = n,
                                _ => return,
                            }
                        }
                        chunk = data.split_to(granted.min(data.len()));
                    }
                    if writer.send_data(chunk, end && data.is_empty()).is_err() {
                        return;
                    }
                    if data.is_empty() {
                        break;
                    }
                }
                if sent {
                    send_event(&inbox, &credits, group, token, GrpcEvent::Sent(1)).await;
                }
                if end {
                    break;
                }
            }
            // Keep the request stream open (the writer alive) until the response ends.
            std::future::pending::<()>().await;
        };
        let receiver = self.receive(&mut h2);
        tokio::select! {
            r = receiver => r,
            // The request stream broke: the response tells the rest.
            () = sender => std::future::pending().await,
        }
    }

    async fn receive(
        &self,
        h2: &mut pingora::protocols::http::v2::client::Http2Session,
    ) -> Result<Option<Vec<u8>>, (i32, String)> {
        let call = &self.call;
        let reset = |e: Box<pingora::Error>| (14, format!("upstream reset: {e}"));
        h2.read_response_header().await.map_err(reset)?;
        let (status, headers) = match h2.response_header() {
            Some(h) => (h.status.as_u16(), h.headers.clone()),
            None => return Err((13, "no response header".into())),
        };
        if status != 200 {
            return Err((grpc_status_of_http(status), format!("upstream answered HTTP {status}")));
        }
        // Trailers-only: the status is in the headers.
        if let Some(end) = status_in(&headers) {
            if call.stream {
                self.deliver(GrpcEvent::InitialMetadata(metadata(&headers))).await;
            }
            return Err(end);
        }
        if call.stream {
            self.deliver(GrpcEvent::InitialMetadata(metadata(&headers))).await;
        }
        let mut buf: Vec<u8> = Vec::new();
        let mut response: Option<Vec<u8>> = None;
        while let Some(chunk) = h2.read_response_body().await.map_err(reset)? {
            buf.extend_from_slice(&chunk);
            if buf.len() > self.max_body.saturating_add(5) {
                return Err((
                    8,
                    format!("a response message is larger than {} bytes (quota max_body_bytes)", self.max_body),
                ));
            }
            while buf.len() >= 5 {
                let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                if buf[0] != 0 {
                    return Err((13, "a compressed response message (no compression was offered)".into()));
                }
                if buf.len() < 5 + len {
                    break;
                }
                let message = buf[5..5 + len].to_vec();
                buf.drain(..5 + len);
                if call.stream {
                    self.deliver(GrpcEvent::Message(message)).await;
                } else if response.replace(message).is_some() {
                    return Err((12, "a unary call got more than one response message".into()));
                }
            }
        }
        if !buf.is_empty() {
            return Err((13, "the response ended inside a message".into()));
        }
        let trailers = h2.read_trailers().await.map_err(reset)?.unwrap_or_default();
        if call.stream {
            self.deliver(GrpcEvent::TrailingMetadata(metadata(&trailers))).await;
        }
        let (status, message) = status_in(&trailers).unwrap_or((2, "the response had no grpc-status".into()));
        match (call.stream, status, response) {
            (false, 0, Some(r)) => Ok(Some(r)),
            (false, 0, None) => Err((12, "a unary call got no response message".into())),
            _ => Err((status, message)),
        }
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
    let headers = session.response_header().map(crate::proxy::response_map).unwrap_or_default();
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
