//! Numeric enumerations of the proxy-wasm ABI (spec section "Enumerations").

use std::fmt;

/// `proxy_status_t`: what a host function returns to the guest.
///
/// This is never a Rust error: it travels back into the guest as an `i32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    /// `OK`.
    Ok = 0,
    /// `NOT_FOUND`.
    NotFound = 1,
    /// `BAD_ARGUMENT`.
    BadArgument = 2,
    /// `SERIALIZATION_FAILURE`.
    SerializationFailure = 3,
    /// `PARSE_FAILURE`.
    ParseFailure = 4,
    /// `INVALID_MEMORY_ACCESS`: a guest pointer or length is out of range.
    InvalidMemoryAccess = 6,
    /// `EMPTY`.
    Empty = 7,
    /// `CAS_MISMATCH`.
    CasMismatch = 8,
    /// `INTERNAL_FAILURE`.
    InternalFailure = 10,
    /// `UNIMPLEMENTED`.
    Unimplemented = 12,
}

impl Status {
    /// Every status, in numeric order.
    pub const ALL: &'static [Self] = &[
        Self::Ok,
        Self::NotFound,
        Self::BadArgument,
        Self::SerializationFailure,
        Self::ParseFailure,
        Self::InvalidMemoryAccess,
        Self::Empty,
        Self::CasMismatch,
        Self::InternalFailure,
        Self::Unimplemented,
    ];

    /// Decodes a raw status; `None` for codes the ABI does not define.
    pub fn from_code(raw: u32) -> Option<Self> {
        Self::ALL.iter().copied().find(|s| *s as u32 == raw)
    }

    /// The spec name of this status.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::NotFound => "NOT_FOUND",
            Self::BadArgument => "BAD_ARGUMENT",
            Self::SerializationFailure => "SERIALIZATION_FAILURE",
            Self::ParseFailure => "PARSE_FAILURE",
            Self::InvalidMemoryAccess => "INVALID_MEMORY_ACCESS",
            Self::Empty => "EMPTY",
            Self::CasMismatch => "CAS_MISMATCH",
            Self::InternalFailure => "INTERNAL_FAILURE",
            Self::Unimplemented => "UNIMPLEMENTED",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

macro_rules! abi_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $val:literal => $s:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        pub enum $name { $($(#[$vm])* $var = $val),* }

        impl $name {
            /// Every value, in numeric order.
            pub const ALL: &'static [Self] = &[$(Self::$var),*];

            /// Decodes a raw ABI value; `None` for values this ABI does not define.
            pub fn from_raw(raw: u32) -> Option<Self> {
                match raw { $($val => Some(Self::$var),)* _ => None }
            }

            /// The lower-case name used in scenarios and records.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$var => $s),* }
            }

            /// Parses the name produced by [`Self::as_str`].
            pub fn parse(name: &str) -> Option<Self> {
                match name { $($s => Some(Self::$var),)* _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

abi_enum! {
    /// `proxy_log_level_t`.
    LogLevel {
        /// TRACE.
        Trace = 0 => "trace",
        /// DEBUG.
        Debug = 1 => "debug",
        /// INFO.
        Info = 2 => "info",
        /// WARN.
        Warn = 3 => "warn",
        /// ERROR.
        Error = 4 => "error",
        /// CRITICAL.
        Critical = 5 => "critical",
    }
}

abi_enum! {
    /// `proxy_map_type_t`: which header map a host call addresses.
    MapType {
        /// HTTP_REQUEST_HEADERS.
        RequestHeaders = 0 => "request_headers",
        /// HTTP_REQUEST_TRAILERS.
        RequestTrailers = 1 => "request_trailers",
        /// HTTP_RESPONSE_HEADERS.
        ResponseHeaders = 2 => "response_headers",
        /// HTTP_RESPONSE_TRAILERS.
        ResponseTrailers = 3 => "response_trailers",
        /// GRPC_CALL_INITIAL_METADATA (received).
        GrpcInitialMetadata = 4 => "grpc_initial_metadata",
        /// GRPC_CALL_TRAILING_METADATA (received).
        GrpcTrailingMetadata = 5 => "grpc_trailing_metadata",
        /// HTTP_CALL_RESPONSE_HEADERS.
        HttpCallResponseHeaders = 6 => "http_call_response_headers",
        /// HTTP_CALL_RESPONSE_TRAILERS.
        HttpCallResponseTrailers = 7 => "http_call_response_trailers",
    }
}

abi_enum! {
    /// `proxy_buffer_type_t`: which byte buffer a host call addresses.
    BufferType {
        /// HTTP_REQUEST_BODY.
        RequestBody = 0 => "request_body",
        /// HTTP_RESPONSE_BODY.
        ResponseBody = 1 => "response_body",
        /// DOWNSTREAM_DATA.
        DownstreamData = 2 => "downstream_data",
        /// UPSTREAM_DATA.
        UpstreamData = 3 => "upstream_data",
        /// HTTP_CALL_RESPONSE_BODY.
        HttpCallResponseBody = 4 => "http_call_response_body",
        /// GRPC_CALL_MESSAGE (received).
        GrpcMessage = 5 => "grpc_message",
        /// VM_CONFIGURATION (0.2.0+).
        VmConfiguration = 6 => "vm_configuration",
        /// PLUGIN_CONFIGURATION (0.2.0+).
        PluginConfiguration = 7 => "plugin_configuration",
        /// FOREIGN_FUNCTION_ARGUMENTS (0.2.0+).
        ForeignFunctionArguments = 8 => "foreign_function_arguments",
    }
}

abi_enum! {
    /// `proxy_stream_type_t` (0.2.0+).
    StreamType {
        /// HTTP_REQUEST.
        HttpRequest = 0 => "http_request",
        /// HTTP_RESPONSE.
        HttpResponse = 1 => "http_response",
        /// DOWNSTREAM.
        Downstream = 2 => "downstream",
        /// UPSTREAM.
        Upstream = 3 => "upstream",
    }
}

abi_enum! {
    /// `proxy_metric_type_t`.
    MetricType {
        /// COUNTER.
        Counter = 0 => "counter",
        /// GAUGE.
        Gauge = 1 => "gauge",
        /// HISTOGRAM.
        Histogram = 2 => "histogram",
    }
}

abi_enum! {
    /// `proxy_peer_type_t`: who closed a TCP connection.
    PeerType {
        /// UNKNOWN.
        Unknown = 0 => "unknown",
        /// LOCAL.
        Local = 1 => "local",
        /// REMOTE.
        Remote = 2 => "remote",
    }
}

/// What a stream callback asked the host to do, after the host's conversion rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Continue processing (0).
    Continue,
    /// Pause (stop iteration) until the filter resumes the stream.
    Pause,
    /// A value above 1 that only C++-SDK filters return (Envoy's extended filter statuses),
    /// kept verbatim.
    Other(u32),
}

impl Action {
    /// Decodes a raw callback result.
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            0 => Self::Continue,
            1 => Self::Pause,
            other => Self::Other(other),
        }
    }

    /// The name used in records: `continue`, `pause`, or `status_<n>`.
    pub fn name(self) -> String {
        match self {
            Self::Continue => "continue".into(),
            Self::Pause => "pause".into(),
            Self::Other(n) => format!("status_{n}"),
        }
    }
}

/// An ABI version a module declares with a `proxy_abi_version_*` export marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AbiVersion {
    /// `proxy_abi_version_0_1_0`.
    V0_1_0,
    /// `proxy_abi_version_0_2_0`.
    V0_2_0,
    /// `proxy_abi_version_0_2_1`.
    V0_2_1,
}

impl AbiVersion {
    /// Every supported version, oldest first.
    pub const ALL: [Self; 3] = [Self::V0_1_0, Self::V0_2_0, Self::V0_2_1];

    /// The export marker that declares this version.
    pub fn marker(self) -> &'static str {
        match self {
            Self::V0_1_0 => "proxy_abi_version_0_1_0",
            Self::V0_2_0 => "proxy_abi_version_0_2_0",
            Self::V0_2_1 => "proxy_abi_version_0_2_1",
        }
    }

    /// Dotted version, e.g. `0.2.1`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_1_0 => "0.1.0",
            Self::V0_2_0 => "0.2.0",
            Self::V0_2_1 => "0.2.1",
        }
    }

    /// The version a marker export name declares.
    pub fn from_marker(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.marker() == name)
    }

    /// Parses `0.1.0`, `0.2.0` or `0.2.1`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    pub(crate) fn bit(self) -> u8 {
        match self {
            Self::V0_1_0 => 1,
            Self::V0_2_0 => 2,
            Self::V0_2_1 => 4,
        }
    }
}

impl fmt::Display for AbiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of ABI versions, used to gate host functions and callbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AbiSet(u8);

impl AbiSet {
    /// Every version.
    pub const ALL: Self = Self(7);
    /// 0.1.0 only.
    pub const V010: Self = Self(1);
    /// 0.2.0 and 0.2.1.
    pub const V02X: Self = Self(6);
    /// 0.2.1 only.
    pub const V021: Self = Self(4);

    /// Whether `v` is in the set.
    pub fn contains(self, v: AbiVersion) -> bool {
        self.0 & v.bit() != 0
    }

    /// The versions in the set, oldest first.
    pub fn versions(self) -> impl Iterator<Item = AbiVersion> {
        AbiVersion::ALL.into_iter().filter(move |v| self.contains(*v))
    }
}
