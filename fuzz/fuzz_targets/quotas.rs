//! No sequence of host calls takes a host-side store past its quota.
//!
//! The same modules as the `hostcalls` target, loaded with tiny quotas; after every call the
//! stores the guest can grow are measured against them: the stream's header maps, bodies,
//! properties and stream-control requests, the VM id's shared data and queues, the metrics, the
//! callouts in flight. Any status or trap is fine; a store over its quota, or a host panic, is
//! a bug.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use wasmux::abi::Limits;
use wasmux::Quotas;

fn quotas() -> Quotas {
    Quotas {
        max_header_count: 6,
        max_header_bytes: 96,
        max_body_bytes: 64,
        max_log_line_bytes: 16,
        max_log_bytes_per_callback: 64,
        max_log_lines_per_callback: 4,
        max_shared_data_keys: 4,
        max_shared_data_value_bytes: 32,
        max_shared_data_bytes: 64,
        max_queues: 3,
        max_queue_items: 4,
        max_queue_bytes: 48,
        max_metrics: 4,
        max_properties: 4,
        max_property_bytes: 64,
        max_callouts: 3,
        max_callout_bytes: 256,
        max_grpc_pending_sends: 3,
        max_stream_controls: 4,
        max_violations_per_callback: 64,
    }
}

fn targets() -> &'static [common::Target] {
    static T: OnceLock<Vec<common::Target>> = OnceLock::new();
    T.get_or_init(|| {
        common::targets(Limits {
            max_memory_bytes: 1 << 20,
            callback_deadline: Some(Duration::from_millis(50)),
            quotas: quotas(),
            ..Limits::default()
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&v, rest)) = data.split_first() else { return };
    let target = &targets()[usize::from(v) % 3];
    let Some((mut plugin, id)) = common::stream(target) else { return };
    let q = quotas();
    let services = target.compiled.options().services.clone();
    common::run_calls(target, &mut plugin, rest, |plugin| {
        if let Ok(h) = plugin.vm().http(id) {
            // The maps the proxy delivered (two headers) may start the stream; growth is the
            // guest's.
            for m in [&h.request_headers, &h.response_headers, &h.request_trailers, &h.response_trailers] {
                assert!(m.len() <= q.max_header_count.max(2), "header count {}", m.len());
                assert!(m.byte_size() <= q.max_header_bytes.max(20), "header bytes {}", m.byte_size());
            }
            for b in [&h.request_body, &h.response_body] {
                assert!(b.buffered.len() <= q.max_body_bytes, "body bytes {}", b.buffered.len());
            }
            assert!(h.properties.len() <= q.max_properties, "properties {}", h.properties.len());
            let bytes: usize = h.properties.iter().map(|(k, v)| k.len() + v.len()).sum();
            assert!(bytes <= q.max_property_bytes, "property bytes {bytes}");
            assert!(h.control.len() <= q.max_stream_controls, "stream controls {}", h.control.len());
        }
        let shared = services.shared_data.entries("");
        assert!(shared.len() <= q.max_shared_data_keys, "shared keys {}", shared.len());
        let bytes: usize = shared.iter().map(|(k, v, _)| k.len() + v.len()).sum();
        assert!(bytes <= q.max_shared_data_bytes, "shared bytes {bytes}");
        let metrics = services.metrics.snapshot();
        assert!(metrics.len() <= q.max_metrics, "metrics {}", metrics.len());
    });
    let _ = plugin.finish(id);
});
