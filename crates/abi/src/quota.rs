//! Host-side quotas: what one plugin may make the host hold or do on its behalf.
//!
//! Guest memory, guest CPU and the guest stack are bounded by the engine ([`Limits`]). Quotas
//! bound the rest: everything a host function stores, copies or keeps alive for the guest
//! (header maps, buffered bodies, log lines, shared data, queues, metrics, properties, callouts,
//! stream-control requests). Every quota has a default that a proxy can live with, documented
//! on its field with what Envoy and proxy-wasm-cpp-host do.
//!
//! What a guest sees when it hits one:
//!
//! - **Logs are truncated**, never refused: a line longer than
//!   [`Quotas::max_log_line_bytes`] keeps its head and a `…[truncated N bytes]` marker, and
//!   once a callback has logged [`Quotas::max_log_bytes_per_callback`] its further lines are
//!   dropped (one marker line says how many).
//! - **Host functions that can fail return a status**: `BAD_ARGUMENT` when one item is too
//!   big on its own (a header value that alone exceeds the map's bytes, a shared-data value,
//!   a queue item), `INTERNAL_FAILURE` when a store is full (header count, keys, queue items,
//!   queues, metrics, properties, callouts in flight, pending gRPC sends, stream-control
//!   requests). These are statuses every SDK declares; Envoy answers `INTERNAL_FAILURE` when
//!   it cannot start a callout.
//! - **A guest that keeps going** past [`Quotas::max_violations_per_callback`] refusals in
//!   one callback traps with [`TrapKind::Quota`](crate::TrapKind::Quota), and the plugin's
//!   failure policy takes over, as for any trap.
//!
//! For comparison, crates.io `proxy-wasm-host` 0.2.0 has opt-in limits (off by default) on log
//! bytes, key and name length, and the queues plus metrics one guest holds, refused with
//! `INTERNAL_FAILURE`; Envoy and proxy-wasm-cpp-host bound none of these stores.
//!
//! Every refusal and truncation is counted per quota ([`QuotaCounts`], readable from
//! [`Vm::quota_counts`](crate::Vm::quota_counts)) and logged at WARN (target
//! `wasmux::quota`, once per quota per callback), so an operator sees which quota a filter
//! hit even when its SDK turns the status into a panic (the Rust SDK panics on most
//! unexpected statuses).
//!
//! [`Limits`]: crate::Limits

use std::fmt;

macro_rules! quotas {
    ($( $(#[$doc:meta])* $var:ident = $name:literal, $status:ident; )*) => {
        /// One quota, as counted and reported.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Quota {
            $( $(#[$doc])* $var, )*
        }

        impl Quota {
            /// Every quota.
            pub const ALL: &'static [Self] = &[$(Self::$var),*];

            /// A short stable name, used in records, logs and metrics.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$var => $name),* }
            }

            /// The status a host function returns when it refuses because of this quota.
            pub fn status(self) -> crate::Status {
                match self { $(Self::$var => crate::Status::$status),* }
            }
        }
    };
}

quotas! {
    /// Entries in one header or trailer map.
    HeaderCount = "header_count", InternalFailure;
    /// Bytes (names plus values) in one header or trailer map.
    HeaderBytes = "header_bytes", BadArgument;
    /// Bytes buffered by the host for one body or TCP data direction of a stream.
    BodyBytes = "body_bytes", BadArgument;
    /// Bytes in one log line (truncated).
    LogLine = "log_line", Ok;
    /// Bytes logged during one callback (further lines dropped).
    LogBytes = "log_bytes", Ok;
    /// Lines logged during one callback (further lines dropped).
    LogLines = "log_lines", Ok;
    /// Keys in the shared data of one VM id.
    SharedDataKeys = "shared_data_keys", InternalFailure;
    /// Bytes of one shared-data value (with its key).
    SharedDataValue = "shared_data_value", BadArgument;
    /// Bytes of all shared data of one VM id.
    SharedDataBytes = "shared_data_bytes", InternalFailure;
    /// Shared queues of one VM id.
    Queues = "queues", InternalFailure;
    /// Items waiting in one shared queue.
    QueueItems = "queue_items", InternalFailure;
    /// Bytes waiting in one shared queue.
    QueueBytes = "queue_bytes", InternalFailure;
    /// Metrics defined in one metrics store.
    Metrics = "metrics", InternalFailure;
    /// Properties set on one context.
    Properties = "properties", InternalFailure;
    /// Bytes (paths plus values) of the properties set on one context.
    PropertyBytes = "property_bytes", BadArgument;
    /// HTTP callouts, gRPC calls and gRPC streams in flight for one VM.
    Callouts = "callouts", InternalFailure;
    /// Bytes held by the callouts in flight of one VM (requests and pending gRPC sends).
    CalloutBytes = "callout_bytes", InternalFailure;
    /// Messages sent on one gRPC stream that the embedder has not yet taken.
    GrpcPendingSends = "grpc_pending_sends", InternalFailure;
    /// Stream-control requests (continue, close) recorded for one stream.
    StreamControls = "stream_controls", InternalFailure;
    /// Refusals in one callback before the callback traps.
    Violations = "violations", Ok;
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The host-side quotas of one plugin. Part of [`Limits`](crate::Limits).
///
/// The defaults are sized for a proxy: generous for any filter seen in the wild, small enough
/// that one plugin cannot make the host hold more than a few hundred MiB.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(default, deny_unknown_fields))]
pub struct Quotas {
    /// Entries per header or trailer map (default 1024). A guest add beyond it is refused.
    /// Envoy's codec accepts 100 headers by default (`max_headers_count`) but does not limit
    /// what filters add; proxy-wasm-cpp-host refuses serialized maps over 1024 pairs.
    pub max_header_count: usize,
    /// Bytes (names plus values) per header or trailer map (default 1 MiB). Envoy's codec
    /// accepts 60 KiB of request headers by default (`max_request_headers_kb`);
    /// proxy-wasm-cpp-host refuses serialized maps over 1 MiB.
    pub max_header_bytes: usize,
    /// Bytes the host buffers per body (or TCP data) direction of a stream, from the proxy
    /// and from `proxy_set_buffer_bytes` (default 16 MiB). When the proxy delivers a chunk
    /// that would overflow it, the host answers the stream as Envoy does when a buffering
    /// filter overflows its buffer: 413 `request_payload_too_large` for requests, 500
    /// `response_payload_too_large` for responses, a close for TCP. Envoy's default
    /// per-connection buffer limit is 1 MiB; proxy-wasm-cpp-host has none of its own.
    pub max_body_bytes: usize,
    /// Bytes per log line, `proxy_log` and WASI stdout/stderr alike (default 16 KiB); longer
    /// lines are truncated. Neither Envoy nor proxy-wasm-cpp-host limits lines.
    pub max_log_line_bytes: usize,
    /// Bytes logged per callback (default 1 MiB); later lines in the same callback are
    /// dropped. Neither Envoy nor proxy-wasm-cpp-host limits this.
    pub max_log_bytes_per_callback: usize,
    /// Lines logged per callback (default 1024); later lines in the same callback are dropped.
    /// A sink that keeps lines (the CLI's record) pays for each line, however short.
    pub max_log_lines_per_callback: usize,
    /// Keys in the shared data of a VM id (default 65 536). Envoy and proxy-wasm-cpp-host
    /// keep shared data without limit.
    pub max_shared_data_keys: usize,
    /// Bytes of one shared-data key plus value (default 1 MiB).
    pub max_shared_data_value_bytes: usize,
    /// Bytes (keys plus values) of all shared data of a VM id (default 64 MiB).
    pub max_shared_data_bytes: usize,
    /// Shared queues per VM id (default 256). Envoy and proxy-wasm-cpp-host keep queues
    /// without limit, each an unbounded list.
    pub max_queues: usize,
    /// Items waiting in one shared queue (default 10 000).
    pub max_queue_items: usize,
    /// Bytes waiting in one shared queue (default 4 MiB).
    pub max_queue_bytes: usize,
    /// Metrics per metrics store (default 10 000). Histograms are kept as fixed buckets, so a
    /// metric's size does not grow with its samples. Envoy limits stats only through its
    /// stats matcher; proxy-wasm-cpp-host keeps metrics without limit.
    pub max_metrics: usize,
    /// Properties set per context (default 1024).
    pub max_properties: usize,
    /// Bytes (paths plus values) of the properties set per context (default 1 MiB).
    pub max_property_bytes: usize,
    /// HTTP callouts, gRPC calls and gRPC streams in flight per VM (default 1024). Envoy
    /// bounds them only through its cluster circuit breakers (1024 pending requests by
    /// default).
    pub max_callouts: usize,
    /// Bytes held by the callouts in flight per VM: request headers, bodies and messages, and
    /// the gRPC stream messages not yet taken by the embedder (default 64 MiB).
    pub max_callout_bytes: usize,
    /// Messages sent on one gRPC stream that the embedder has not taken yet (default 1024;
    /// see [`Vm::on_grpc_sent`](crate::Vm::on_grpc_sent)).
    pub max_grpc_pending_sends: usize,
    /// Stream-control requests (continue, close) per stream (default 256).
    pub max_stream_controls: usize,
    /// Refusals per callback before the callback traps with
    /// [`TrapKind::Quota`](crate::TrapKind::Quota) (default 1000): a filter that checks its
    /// statuses carries on; one that hammers a full store is stopped.
    pub max_violations_per_callback: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            max_header_count: 1024,
            max_header_bytes: 1 << 20,
            max_body_bytes: 16 << 20,
            max_log_line_bytes: 16 << 10,
            max_log_bytes_per_callback: 1 << 20,
            max_log_lines_per_callback: 1024,
            max_shared_data_keys: 65_536,
            max_shared_data_value_bytes: 1 << 20,
            max_shared_data_bytes: 64 << 20,
            max_queues: 256,
            max_queue_items: 10_000,
            max_queue_bytes: 4 << 20,
            max_metrics: 10_000,
            max_properties: 1024,
            max_property_bytes: 1 << 20,
            max_callouts: 1024,
            max_callout_bytes: 64 << 20,
            max_grpc_pending_sends: 1024,
            max_stream_controls: 256,
            max_violations_per_callback: 1000,
        }
    }
}

impl Quotas {
    /// The configured limit of `quota`, in its unit (entries, bytes, requests).
    pub fn limit(&self, quota: Quota) -> u64 {
        let v = match quota {
            Quota::HeaderCount => self.max_header_count,
            Quota::HeaderBytes => self.max_header_bytes,
            Quota::BodyBytes => self.max_body_bytes,
            Quota::LogLine => self.max_log_line_bytes,
            Quota::LogBytes => self.max_log_bytes_per_callback,
            Quota::LogLines => self.max_log_lines_per_callback,
            Quota::SharedDataKeys => self.max_shared_data_keys,
            Quota::SharedDataValue => self.max_shared_data_value_bytes,
            Quota::SharedDataBytes => self.max_shared_data_bytes,
            Quota::Queues => self.max_queues,
            Quota::QueueItems => self.max_queue_items,
            Quota::QueueBytes => self.max_queue_bytes,
            Quota::Metrics => self.max_metrics,
            Quota::Properties => self.max_properties,
            Quota::PropertyBytes => self.max_property_bytes,
            Quota::Callouts => self.max_callouts,
            Quota::CalloutBytes => self.max_callout_bytes,
            Quota::GrpcPendingSends => self.max_grpc_pending_sends,
            Quota::StreamControls => self.max_stream_controls,
            Quota::Violations => self.max_violations_per_callback as usize,
        };
        v as u64
    }

    /// No quota at all: every limit at its maximum. For trusted filters and benchmarks only.
    pub fn unlimited() -> Self {
        Self {
            max_header_count: usize::MAX,
            max_header_bytes: usize::MAX,
            max_body_bytes: usize::MAX,
            max_log_line_bytes: usize::MAX,
            max_log_bytes_per_callback: usize::MAX,
            max_log_lines_per_callback: usize::MAX,
            max_shared_data_keys: usize::MAX,
            max_shared_data_value_bytes: usize::MAX,
            max_shared_data_bytes: usize::MAX,
            max_queues: usize::MAX,
            max_queue_items: usize::MAX,
            max_queue_bytes: usize::MAX,
            max_metrics: usize::MAX,
            max_properties: usize::MAX,
            max_property_bytes: usize::MAX,
            max_callouts: usize::MAX,
            max_callout_bytes: usize::MAX,
            max_grpc_pending_sends: usize::MAX,
            max_stream_controls: usize::MAX,
            max_violations_per_callback: u32::MAX,
        }
    }
}

/// Refusals and truncations per quota, for one VM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaCounts {
    counts: [u64; Quota::ALL.len()],
}

impl QuotaCounts {
    /// How many times `quota` was hit.
    pub fn get(&self, quota: Quota) -> u64 {
        self.counts[quota as usize]
    }

    /// Every quota hit at least once, with its count.
    pub fn iter(&self) -> impl Iterator<Item = (Quota, u64)> + '_ {
        Quota::ALL.iter().map(|q| (*q, self.counts[*q as usize])).filter(|(_, n)| *n > 0)
    }

    /// Hits over all quotas.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
    }

    pub(crate) fn bump(&mut self, quota: Quota) {
        self.counts[quota as usize] += 1;
    }
}

/// Why an embedder service refused a request: a status for the guest, or a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A plain status (`NOT_FOUND`, `CAS_MISMATCH`, ...).
    Status(crate::Status),
    /// A quota: the host counts it and answers with [`Quota::status`].
    Quota(Quota),
}

impl From<crate::Status> for Refused {
    fn from(s: crate::Status) -> Self {
        Self::Status(s)
    }
}

impl From<Quota> for Refused {
    fn from(q: Quota) -> Self {
        Self::Quota(q)
    }
}

/// What one top-level callback has used so far; reset at the start of each callback.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallBudget {
    /// Bytes logged.
    pub(crate) logged: usize,
    /// Lines logged.
    pub(crate) lines: usize,
    /// Lines dropped because the callback's log budget ran out.
    pub(crate) dropped_lines: u64,
    /// Refusals.
    pub(crate) violations: u32,
    /// Quotas already reported in the host's log during this callback (bit per quota).
    pub(crate) reported: u32,
}
