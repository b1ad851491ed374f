//! Guest exports the host calls: one list gives each callback's name, its signature per ABI
//! version, and the slot it is resolved into once per instance.

use crate::vm::{FuncRef, FuncType, ValType::I32};
use crate::{AbiSet, AbiVersion};

macro_rules! callbacks {
    ($( $var:ident = $name:literal, $ver:ident, ( $($p:ident),* ) -> ( $($r:ident)? ) $(, v010 ( $($p0:ident),* ) -> ( $($r0:ident)? ))? ; )*) => {
        /// A guest export the host may call.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(missing_docs, reason = "each variant is named after the spec export it stands for")]
        pub enum Callback { $($var),* }

        impl Callback {
            /// Every callback.
            pub const ALL: &'static [Self] = &[$(Self::$var),*];

            /// The export name.
            pub fn name(self) -> &'static str {
                match self { $(Self::$var => $name),* }
            }

            /// The ABI versions in which the host calls it.
            pub fn versions(self) -> AbiSet {
                match self { $(Self::$var => AbiSet::$ver),* }
            }

            /// The exact signature the guest must export in `version`.
            pub fn signature(self, version: AbiVersion) -> FuncType {
                match self {
                    $(Self::$var => {
                        $( if version == AbiVersion::V0_1_0 {
                            return FuncType::new(&[$($p0),*], &[$($r0)?]);
                        } )?
                        let _ = version;
                        FuncType::new(&[$($p),*], &[$($r)?])
                    })*
                }
            }
        }
    };
}

callbacks! {
    Initialize = "_initialize", ALL, () -> ();
    Main = "main", ALL, (I32, I32) -> (I32);
    MainVoid = "__main_void", ALL, () -> (I32);
    Start = "_start", ALL, () -> ();
    OnContextCreate = "proxy_on_context_create", ALL, (I32, I32) -> ();
    OnVmStart = "proxy_on_vm_start", ALL, (I32, I32) -> (I32);
    OnConfigure = "proxy_on_configure", ALL, (I32, I32) -> (I32);
    OnTick = "proxy_on_tick", ALL, (I32) -> ();
    OnDone = "proxy_on_done", ALL, (I32) -> (I32);
    OnLog = "proxy_on_log", ALL, (I32) -> ();
    OnDelete = "proxy_on_delete", ALL, (I32) -> ();
    OnQueueReady = "proxy_on_queue_ready", ALL, (I32, I32) -> ();
    OnForeignFunction = "proxy_on_foreign_function", V02X, (I32, I32, I32) -> ();
    OnNewConnection = "proxy_on_new_connection", ALL, (I32) -> (I32);
    OnDownstreamData = "proxy_on_downstream_data", ALL, (I32, I32, I32) -> (I32);
    OnDownstreamConnectionClose = "proxy_on_downstream_connection_close", ALL, (I32, I32) -> ();
    OnUpstreamData = "proxy_on_upstream_data", ALL, (I32, I32, I32) -> (I32);
    OnUpstreamConnectionClose = "proxy_on_upstream_connection_close", ALL, (I32, I32) -> ();
    OnRequestHeaders = "proxy_on_request_headers", ALL, (I32, I32, I32) -> (I32), v010 (I32, I32) -> (I32);
    OnRequestBody = "proxy_on_request_body", ALL, (I32, I32, I32) -> (I32);
    OnRequestTrailers = "proxy_on_request_trailers", ALL, (I32, I32) -> (I32);
    OnResponseHeaders = "proxy_on_response_headers", ALL, (I32, I32, I32) -> (I32), v010 (I32, I32) -> (I32);
    OnResponseBody = "proxy_on_response_body", ALL, (I32, I32, I32) -> (I32);
    OnResponseTrailers = "proxy_on_response_trailers", ALL, (I32, I32) -> (I32);
    OnHttpCallResponse = "proxy_on_http_call_response", ALL, (I32, I32, I32, I32, I32) -> ();
    OnGrpcReceiveInitialMetadata = "proxy_on_grpc_receive_initial_metadata", ALL, (I32, I32, I32) -> ();
    OnGrpcReceive = "proxy_on_grpc_receive", ALL, (I32, I32, I32) -> ();
    OnGrpcReceiveTrailingMetadata = "proxy_on_grpc_receive_trailing_metadata", ALL, (I32, I32, I32) -> ();
    OnGrpcClose = "proxy_on_grpc_close", ALL, (I32, I32, I32) -> ();
    OnMemoryAllocate = "proxy_on_memory_allocate", ALL, (I32) -> (I32);
    Malloc = "malloc", ALL, (I32) -> (I32);
}

/// Callbacks resolved once per instance; absent exports are `None`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Exports {
    slots: Vec<Option<FuncRef>>,
    /// `malloc` if exported, else `proxy_on_memory_allocate` (what cpp-host does).
    pub(crate) allocator: Option<FuncRef>,
}

impl Exports {
    pub(crate) fn resolve(mut lookup: impl FnMut(&str) -> Option<FuncRef>, version: AbiVersion) -> Self {
        let slots: Vec<_> = Callback::ALL
            .iter()
            .map(|cb| if cb.versions().contains(version) { lookup(cb.name()) } else { None })
            .collect();
        let allocator = slots[Callback::Malloc as usize].or(slots[Callback::OnMemoryAllocate as usize]);
        Self { slots, allocator }
    }

    pub(crate) fn get(&self, cb: Callback) -> Option<FuncRef> {
        self.slots.get(cb as usize).copied().flatten()
    }
}
