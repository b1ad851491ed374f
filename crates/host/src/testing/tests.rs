//! The kit through its Rust API: parsing, chunking plans, expectations on every wasm engine
//! compiled in.

use std::path::{Path, PathBuf};

use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/fixtures/wasm").join(name)
}

fn wasm_engines() -> Vec<Runtime> {
    Runtime::available().iter().copied().filter(|r| r.runs_wasm()).collect()
}

/// A test file whose module is the headers fixture (paths resolve from the fixtures dir).
fn headers_file(tests: &str) -> TestFile {
    let text = format!("module: headers.wasip1.wasm\ntests:\n{tests}");
    TestFile::parse(&text, fixture("tests.yaml")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn defaults_fill_what_a_test_leaves_out() {
    let text = "module: m.wasm\ndefaults: {plugin_config: base, vm_id: v}\ntests:\n  - {name: a}\n  - {name: b, plugin_config: own}\n";
    let f = TestFile::parse(text, "x/t.yaml").unwrap_or_else(|e| panic!("{e}"));
    let configs: Vec<_> = f.tests().iter().map(|t| t.scenario().plugin_config.clone()).collect();
    assert_eq!(configs, [scenario::Bytes::Text("base".into()), scenario::Bytes::Text("own".into())]);
    assert!(f.tests().iter().all(|t| t.scenario().vm_id == "v"));
    assert_eq!(f.module, Some(PathBuf::from("x/m.wasm")));
}

#[test]
fn chunking_plans_split_a_body_and_only_the_last_piece_ends_the_stream() {
    let text = "tests:\n  - name: t\n    events:\n      - {event: http_stream, stream: a}\n      - {event: request_body, stream: a, data: abcdefghij, chunk_size: 4, end_of_stream: true}\n      - {event: response_body, stream: a, data: abcdefghij, num_chunks: 3}\n";
    let f = TestFile::parse(text, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
    let pieces: Vec<(String, bool)> = f.tests()[0].scenario().events[1..]
        .iter()
        .map(|e| match e {
            Event::RequestBody { data, end_of_stream, .. } | Event::ResponseBody { data, end_of_stream, .. } => {
                (String::from_utf8(data.to_vec().unwrap_or_default()).unwrap_or_default(), *end_of_stream)
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let want = [("abcd", false), ("efgh", false), ("ij", true), ("abcd", false), ("efgh", false), ("ij", false)];
    assert_eq!(pieces, want.map(|(d, e)| (d.to_string(), e)));
    // Expectations attach to the last piece only.
    assert_eq!(f.tests()[0].events.len(), 7);
}

#[test]
fn subset_names_the_first_difference() {
    let actual = serde_json::json!({"a": {"b": [1, 2]}, "c": "x"});
    assert!(subset(&serde_json::json!({"a": {"b": [1, 2]}}), &actual).is_ok());
    let e = subset(&serde_json::json!({"a": {"b": [1, 3]}}), &actual).err().unwrap_or_default();
    assert_eq!(e, "$.a.b[1]: expected 3, found 2");
    let e = subset(&serde_json::json!({"d": 1}), &actual).err().unwrap_or_default();
    assert!(e.starts_with("$.d: expected 1, but the record has no such key"), "{e}");
}

#[test]
fn expectations_hold_on_every_wasm_engine() {
    let file = headers_file(
        "  - name: ok
    events:
      - {event: http_stream, stream: a}
      - event: request_headers
        stream: a
        headers: [[':path', /hello], [x-remove-me, 1]]
        expect:
          action: continue
          request_headers: {has: {x-wasmux-request: seen}, absent: [x-remove-me]}
          logs: [{level: info, context: a, regex: '^request path: /hello$'}]
      - {event: finish, stream: a}
    expect:
      streams: {a: {finished: done, no_local_reply: true}}
      callouts: []
",
    );
    let report = file.run(&wasm_engines(), &RunSettings::new());
    report.assert_passed();
    assert_eq!(report.counts(), (wasm_engines().len(), 0, 0));
}

#[test]
fn unmet_expectations_are_failures_with_expected_and_actual() {
    let file = headers_file(
        "  - name: wrong
    events:
      - {event: http_stream, stream: a}
      - event: request_headers
        stream: a
        headers: [[':path', /deny]]
        expect: {action: continue}
    expect:
      streams: {a: {local_reply: {status: 401, body: {contains: nope}}}}
",
    );
    for runtime in wasm_engines() {
        let report = file.run(&[runtime], &RunSettings::new());
        let Outcome::Failed(failures) = &report.results[0].outcome else {
            panic!("{runtime}: expected a failure, got {:?}", report.results[0].outcome)
        };
        let got: Vec<(&str, &str, &str)> =
            failures.iter().map(|f| (f.what.as_str(), f.expected.as_str(), f.actual.as_str())).collect();
        assert_eq!(
            got,
            [
                ("action", "continue", "pause"),
                ("local_reply.status", "401", "403"),
                ("local_reply.body", "containing \"nope\"", "\"denied\\n\""),
            ],
            "{runtime}"
        );
        let caught = std::panic::catch_unwind(|| report.assert_passed());
        assert!(caught.is_err(), "{runtime}: assert_passed must panic");
    }
}

#[test]
fn a_missing_module_is_an_error_not_a_pass() {
    let text = "module: nowhere.wasm\ntests:\n  - {name: t}\n";
    let f = TestFile::parse(text, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
    let report = f.run(&wasm_engines(), &RunSettings::new());
    assert!(!report.passed());
    assert!(report.results.iter().all(|r| matches!(&r.outcome, Outcome::Error(w) if w.contains("nowhere.wasm"))));
}

#[test]
fn background_streams_stay_in_flight_and_report_memory() {
    let file = headers_file(
        "  - name: many
    limits: {max_memory_bytes: 16777216}
    background_streams: 200
    events:
      - {event: http_stream, stream: a}
      - {event: request_headers, stream: a, headers: [[':path', /hello]]}
      - {event: finish, stream: a}
    expect:
      streams: {a: {finished: done}}
",
    );
    let report = file.run(&wasm_engines(), &RunSettings::new());
    report.assert_passed();
    for r in &report.results {
        let m = r.memory().unwrap_or_else(|| panic!("{}: no memory figures", r.engine));
        assert_eq!((m.streams, m.completed), (200, 200), "{}", r.engine);
        assert!(m.guest_after >= m.guest_before && m.guest_after > 0, "{}: {m:?}", r.engine);
        // The copies are not in the record's streams, and the test's own stream is.
        let streams = r.record.as_ref().and_then(|x| x.get("streams")).and_then(Value::as_object);
        assert_eq!(streams.map(|s| s.keys().cloned().collect::<Vec<_>>()), Some(vec!["a".to_string()]), "{}", r.engine);
    }
    assert!(report.memory_matrix().contains("200/200 streams"), "{}", report.memory_matrix());
}

#[test]
fn event_names_are_the_serialized_tags() {
    let text = "tests:\n  - name: t\n    events:\n      - {event: http_stream, stream: a}\n      - {event: request_trailers, stream: a, trailers: []}\n      - {event: grpc_initial_metadata, call: 0}\n      - {event: advance_clock, ms: 1}\n      - {event: shutdown}\n";
    let f = TestFile::parse(text, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
    for ev in &f.tests()[0].scenario().events {
        let tag = serde_json::to_value(ev).ok().and_then(|v| v["event"].as_str().map(str::to_string));
        assert_eq!(tag.as_deref(), Some(ev.name()));
    }
}

#[test]
fn error_expectations_see_the_trap_the_policy_answered() {
    let file = headers_file(
        "  - name: no error, but it traps
    events:
      - {event: http_stream, stream: t}
      - event: request_headers
        stream: t
        headers: [[':path', /trap]]
        expect: {error: false}
  - name: a trap, by kind
    events:
      - {event: http_stream, stream: t}
      - event: request_headers
        stream: t
        headers: [[':path', /trap]]
        expect: {error: {kind: trap, trap: unreachable}}
",
    );
    for runtime in wasm_engines() {
        let report = file.run(&[runtime], &RunSettings::new());
        let Outcome::Failed(failures) = &report.results[0].outcome else {
            panic!("{runtime}: `error: false` on a trap must fail, got {:?}", report.results[0].outcome)
        };
        assert_eq!(failures.len(), 1, "{runtime}: {failures:?}");
        assert_eq!((failures[0].what.as_str(), failures[0].expected.as_str()), ("error", "false"), "{runtime}");
        assert!(failures[0].actual.contains("\"unreachable\""), "{runtime}: {}", failures[0].actual);
        assert_eq!(report.results[1].outcome, Outcome::Passed, "{runtime}");
    }
}
