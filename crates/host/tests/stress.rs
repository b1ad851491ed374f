//! Concurrency stress: several worker threads, each with its own instance of one compiled
//! plugin, all sharing one VM id's shared data and queues (as proxy workers do).
//!
//! Every request CAS-increments a shared counter and enqueues its path on a shared queue whose
//! owner drains it in `proxy_on_queue_ready`. Nothing may be lost: the final counter equals the
//! number of successful CAS writes, and every enqueued item is dequeued exactly once. Sizes are
//! bounded so the test stays fast.

use std::collections::BTreeMap;
use std::sync::Arc;

use wasmux::abi::services::{InMemoryMetrics, MemoryLog, MetricSnapshot, Metrics as _};
use wasmux::{HeaderMap, PluginOptions, Runtime, Services};

const THREADS: usize = 4;
const REQUESTS: usize = 250;

fn fixture() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../conformance/fixtures/wasm/shared.wasip1.wasm");
    std::fs::read(path).expect("fixture exists")
}

#[test]
fn shared_data_and_queues_lose_nothing_under_concurrency() {
    let wasm = fixture();
    for rt in Runtime::available() {
        let log = Arc::new(MemoryLog::default());
        let metrics = Arc::new(InMemoryMetrics::default());
        let services = Services { log: log.clone(), metrics: metrics.clone(), ..Default::default() };
        let options = PluginOptions { vm_id: "stress".into(), services: services.clone(), ..Default::default() };
        let compiled = match rt.load(&wasm, options) {
            Ok(c) => c,
            // Engines that load native libraries instead of wasm bytes (null) are not covered.
            Err(e) if rt.name() == "null" => {
                eprintln!("skipping {rt}: {e}");
                continue;
            }
            Err(e) => panic!("{rt}: load failed: {e}"),
        };

        // Seed the counter: a write to an absent key carries CAS token 0, which the ABI defines
        // as "no compare", so first writers could race. From here on every write is a real CAS.
        services.shared_data.set("stress", b"counter", b"0", 0, &Default::default()).expect("seed");

        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let compiled = compiled.clone();
                std::thread::spawn(move || {
                    let mut plugin = compiled.instantiate().expect("instantiate");
                    let mut counts = Vec::new();
                    for r in 0..REQUESTS {
                        let id = plugin.http_stream().expect("stream");
                        let path = format!("/t{t}/r{r}");
                        let headers = HeaderMap::from_pairs([(":path", path.as_str()), ("content-length", "7")]);
                        plugin.request_headers(id, headers, true).expect("request headers");
                        let h = plugin.vm().http(id).expect("stream state");
                        let count = h.request_headers.get(b"x-count").map(|v| String::from_utf8_lossy(v).into_owned());
                        counts.push(count.expect("x-count header"));
                        assert!(plugin.finish(id).expect("finish"));
                    }
                    (plugin, counts)
                })
            })
            .collect();
        let mut plugins = Vec::new();
        let mut counts = Vec::new();
        for w in workers {
            let (p, c) = w.join().expect("worker panicked");
            plugins.push(p);
            counts.extend(c);
        }
        // Deliver queue notifications that arrived after a worker's last request.
        for p in &mut plugins {
            p.poll().expect("poll");
        }

        // Counter: every successful CAS write produced a distinct value 1..=n, and the stored
        // value is n.
        let mut written: Vec<u64> = counts.iter().filter_map(|c| c.parse().ok()).collect();
        let failed = counts.len() - written.len();
        written.sort_unstable();
        let n = written.len() as u64;
        assert_eq!(written, (1..=n).collect::<Vec<_>>(), "{rt}: CAS writes are not 1..=n");
        let stored = services.shared_data.get("stress", b"counter").expect("counter exists").0;
        assert_eq!(String::from_utf8_lossy(&stored), n.to_string(), "{rt}: final counter");
        assert!(failed <= counts.len() / 10, "{rt}: {failed} requests exhausted their CAS retries");

        // Queue: every path enqueued once is dequeued exactly once.
        let mut dequeued: BTreeMap<String, usize> = BTreeMap::new();
        for r in log.records() {
            if let Some(item) = r.message.strip_prefix("dequeued: ") {
                *dequeued.entry(item.to_string()).or_default() += 1;
            }
        }
        assert_eq!(dequeued.len(), THREADS * REQUESTS, "{rt}: items dequeued");
        assert!(dequeued.values().all(|&c| c == 1), "{rt}: an item was dequeued twice");

        // Metrics: one request counted per request; the in-flight gauge is back to zero.
        let m: BTreeMap<String, MetricSnapshot> = metrics.snapshot().into_iter().map(|m| (m.name.clone(), m)).collect();
        assert_eq!(m["wasmux_requests"].value, (THREADS * REQUESTS) as i64, "{rt}: request counter");
        assert_eq!(m["wasmux_inflight"].value, 0, "{rt}: in-flight gauge");
        assert_eq!(m["wasmux_body_size"].value, (THREADS * REQUESTS) as i64, "{rt}: histogram samples");
        let h = m["wasmux_body_size"].histogram.clone().unwrap_or_default();
        assert_eq!(h.count(), (THREADS * REQUESTS) as u64, "{rt}: histogram buckets");
    }
}
