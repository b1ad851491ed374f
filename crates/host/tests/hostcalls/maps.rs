//! The `proxy_*_header_map_*` functions and the pairs format.

use wasmux::AbiVersion;

use crate::harness::{H, Wat, entries, headers, owned, pairs, spairs, st, unpairs};

/// Reads (first value, case-insensitive names, empty values, missing keys per version, size,
/// pairs) and edits (add, replace with duplicates, remove) of the request headers.
pub(crate) fn header_map_reads_and_edits() {
    for v in AbiVersion::ALL {
        let wat = Wat::new(v)
            .data("xa", "x-a")
            .data("XA", "X-A")
            .data("empty", "empty")
            .data("missing", "missing")
            .data("xb", "x-b")
            .data("v3", "3")
            .data("v9", "9")
            .data("xnew", "x-new")
            .data("vn", "n")
            .data("nothing", "nothing")
            .cb(
                "proxy_on_request_headers",
                &[
                    st(0, "(local.get 1)"),
                    st(1, "(call $proxy_get_header_map_value (i32.const 0) {xa} {o0})"),
                    st(2, "(call $proxy_get_header_map_value (i32.const 0) {XA} {o1})"),
                    st(3, "(call $mallocs)"),
                    st(4, "(call $proxy_get_header_map_value (i32.const 0) {empty} {o2})"),
                    st(5, "(call $proxy_get_header_map_value (i32.const 0) {missing} {o3})"),
                    st(6, "(call $mallocs)"),
                    st(7, "(call $proxy_get_header_map_size (i32.const 0) {o4.a})"),
                    st(8, "(call $proxy_get_header_map_pairs (i32.const 0) {o5})"),
                    st(9, "(call $proxy_add_header_map_value (i32.const 0) {xb} {v3})"),
                    st(10, "(call $proxy_replace_header_map_value (i32.const 0) {xa} {v9})"),
                    st(11, "(call $proxy_replace_header_map_value (i32.const 0) {xnew} {vn})"),
                    st(12, "(call $proxy_remove_header_map_value (i32.const 0) {empty})"),
                    st(13, "(call $proxy_remove_header_map_value (i32.const 0) {nothing})"),
                    st(14, "(call $proxy_get_header_map_pairs (i32.const 2) {o6})"),
                    st(15, "(call $proxy_get_header_map_size (i32.const 2) {o7.a})"),
                    st(16, "(call $proxy_get_header_map_pairs (i32.const 0) {o8})"),
                    st(17, "(call $proxy_add_header_map_value (i32.const 0) {xb} (i32.const 0) (i32.const 0))"),
                    "(i32.const 0)".into(),
                ]
                .concat(),
            );
        let mut h = H::new(&wat);
        let id = h.stream();
        let initial = [(":path", "/p"), ("x-a", "1"), ("x-a", "2"), ("empty", "")];
        h.plugin.request_headers(id, headers(&initial), false).unwrap();
        let missing = if v == AbiVersion::V0_1_0 { 0 } else { 1 };
        assert_eq!(h.slots(0, 18), [4, 0, 0, 2, 0, missing, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], "{v}");
        assert_eq!(h.out_str(0), "1", "{v}: first value");
        assert_eq!(h.out_str(1), "1", "{v}: names compare case-insensitively");
        assert_eq!(h.out(2), (0, 0), "{v}: empty value");
        if v == AbiVersion::V0_1_0 {
            assert_eq!(h.out(3), (0, 0), "0.1.0: missing key is OK with an empty value");
        } else {
            h.out_untouched(3);
        }
        let serialized = h.out_bytes(5);
        assert_eq!(serialized, spairs(&initial), "{v}: pairs format");
        assert_eq!(h.out_word(4, 0), 64, "{v}: size of the serialized map");
        assert_eq!(h.out_word(4, 0) as usize, serialized.len());
        assert_eq!(h.out(6), (0, 0), "{v}: empty map is (0, 0)");
        assert_eq!(h.out_word(7, 0), 0);
        let after: Vec<(String, String)> =
            unpairs(&h.out_bytes(8)).into_iter().map(|(k, v)| (k, String::from_utf8(v).unwrap())).collect();
        // A replaced name ends up last, as in Envoy (its `setCopy` removes, then adds).
        assert_eq!(after, owned(&[(":path", "/p"), ("x-b", "3"), ("x-a", "9"), ("x-new", "n")]), "{v}");
        assert_eq!(
            entries(&h.http(id).request_headers),
            owned(&[(":path", "/p"), ("x-b", "3"), ("x-a", "9"), ("x-new", "n"), ("x-b", "")]),
            "{v}"
        );
    }
}

/// `proxy_set_header_map_pairs` replaces whole maps; empty input ((0, 0) or N = 0) clears;
/// malformed or over-limit input is BAD_ARGUMENT and changes nothing; values may hold any
/// byte, NUL included.
pub(crate) fn header_map_pairs_replace_whole_maps() {
    let good = spairs(&[(":status", "201"), ("x-one", "1"), ("x-two", "")]);
    let mut bad_nul = good.clone();
    *bad_nul.last_mut().unwrap() = b'x';
    let mut trailing = good.clone();
    trailing.push(0);
    let truncated = good[..good.len() - 1].to_vec();
    let mut short_count = good.clone();
    short_count[0] = 4;
    let too_many = 1025u32.to_le_bytes().to_vec();
    let binary = pairs(&[("bin", b"a\0b")]);
    for v in AbiVersion::ALL {
        let wat = Wat::new(v)
            .data("good", &good)
            .data("badnul", &bad_nul)
            .data("trailing", &trailing)
            .data("trunc", &truncated)
            .data("shortcount", &short_count)
            .data("toomany", &too_many)
            .data("empty4", [0u8; 4])
            .data("bin", &binary)
            .data("binkey", "bin")
            .cb(
                "proxy_on_response_headers",
                &[
                    st(0, "(call $proxy_set_header_map_pairs (i32.const 2) {good})"),
                    st(1, "(call $proxy_set_header_map_pairs (i32.const 2) {badnul})"),
                    st(2, "(call $proxy_set_header_map_pairs (i32.const 2) {trailing})"),
                    st(3, "(call $proxy_set_header_map_pairs (i32.const 2) {trunc})"),
                    st(4, "(call $proxy_set_header_map_pairs (i32.const 2) {toomany})"),
                    st(5, "(call $proxy_set_header_map_pairs (i32.const 0) {empty4})"),
                    st(6, "(call $proxy_set_header_map_pairs (i32.const 1) (i32.const 0) (i32.const 0))"),
                    st(7, "(call $proxy_set_header_map_pairs (i32.const 3) {bin})"),
                    st(8, "(call $proxy_get_header_map_value (i32.const 3) {binkey} {o0})"),
                    st(9, "(call $proxy_get_header_map_pairs (i32.const 2) {o1})"),
                    st(10, "(call $proxy_get_header_map_pairs (i32.const 0) {o2})"),
                    st(11, "(call $proxy_set_header_map_pairs (i32.const 2) {shortcount})"),
                    st(12, "(call $proxy_get_header_map_pairs (i32.const 3) {o3})"),
                    "(i32.const 0)".into(),
                ]
                .concat(),
            );
        let mut h = H::new(&wat);
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[(":path", "/")]), false).unwrap();
        h.plugin.request_trailers(id, headers(&[("rt", "1")])).unwrap();
        h.plugin.response_headers(id, headers(&[(":status", "200")]), false).unwrap();
        assert_eq!(h.slots(0, 13), [0, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 2, 0], "{v}");
        assert_eq!(h.out_bytes(0), b"a\0b", "{v}: binary value");
        assert_eq!(h.out_bytes(1), good, "{v}: malformed maps changed nothing");
        assert_eq!(h.out(2), (0, 0));
        assert_eq!(h.out_bytes(3), binary, "{v}: binary value round-trips through the pairs format");
        let s = h.http(id);
        assert_eq!(entries(&s.response_headers), owned(&[(":status", "201"), ("x-one", "1"), ("x-two", "")]));
        assert!(s.request_headers.is_empty(), "{v}: N = 0 clears");
        assert!(s.request_trailers.is_empty(), "{v}: (0, 0) clears");
        assert_eq!(s.response_trailers.get(b"bin"), Some(&b"a\0b"[..]));
    }
}

/// Trailer maps in their callbacks; stream maps from a root context and callout maps outside
/// their callbacks are NOT_FOUND for every map function.
pub(crate) fn trailers_and_unavailable_maps() {
    let good = spairs(&[("a", "b")]);
    for v in AbiVersion::ALL {
        let wat = Wat::new(v)
            .data("rt", "rt")
            .data("v2", "two")
            .data("gs", "grpc-status")
            .data("extra", "x-extra")
            .data("good", &good)
            .cb(
                "proxy_on_request_trailers",
                &[
                    st(0, "(local.get 1)"),
                    st(1, "(call $proxy_get_header_map_value (i32.const 1) {rt} {o0})"),
                    st(2, "(call $proxy_replace_header_map_value (i32.const 1) {rt} {v2})"),
                    st(3, "(call $proxy_get_header_map_size (i32.const 1) {o1.a})"),
                    "(i32.const 0)".into(),
                ]
                .concat(),
            )
            .cb(
                "proxy_on_response_trailers",
                &[
                    st(10, "(call $proxy_get_header_map_value (i32.const 3) {gs} {o2})"),
                    st(11, "(call $proxy_add_header_map_value (i32.const 3) {extra} {v2})"),
                    st(12, "(call $proxy_get_header_map_pairs (i32.const 3) {o3})"),
                    "(i32.const 0)".into(),
                ]
                .concat(),
            )
            .cb(
                "proxy_on_tick",
                &[
                    st(20, "(call $proxy_get_header_map_value (i32.const 0) {rt} {o4})"),
                    st(21, "(call $proxy_get_header_map_pairs (i32.const 0) {o4})"),
                    st(22, "(call $proxy_get_header_map_size (i32.const 2) {o4.a})"),
                    st(23, "(call $proxy_add_header_map_value (i32.const 1) {rt} {v2})"),
                    st(24, "(call $proxy_replace_header_map_value (i32.const 3) {rt} {v2})"),
                    st(25, "(call $proxy_remove_header_map_value (i32.const 0) {rt})"),
                    st(26, "(call $proxy_set_header_map_pairs (i32.const 0) {good})"),
                    st(27, "(call $proxy_get_header_map_value (i32.const 6) {rt} {o4})"),
                    st(28, "(call $proxy_get_header_map_value (i32.const 4) {rt} {o4})"),
                    st(29, "(call $proxy_get_header_map_pairs (i32.const 5) {o4})"),
                    st(30, "(call $proxy_get_header_map_pairs (i32.const 7) {o4})"),
                    st(31, "(call $proxy_set_header_map_pairs (i32.const 6) {good})"),
                ]
                .concat(),
            );
        let mut h = H::new(&wat);
        let id = h.stream();
        h.plugin.request_trailers(id, headers(&[("rt", "1")])).unwrap();
        assert_eq!(h.slots(0, 4), [1, 0, 0, 0], "{v}");
        assert_eq!(h.out_str(0), "1");
        assert_eq!(h.out_word(1, 0), 4 + 10 + 2 + 3, "{v}: size after the replace");
        assert_eq!(entries(&h.http(id).request_trailers), owned(&[("rt", "two")]));
        h.plugin.response_trailers(id, headers(&[("grpc-status", "0")])).unwrap();
        assert_eq!(h.slots(10, 3), [0, 0, 0], "{v}");
        assert_eq!(h.out_str(2), "0");
        assert_eq!(h.out_bytes(3), spairs(&[("grpc-status", "0"), ("x-extra", "two")]));
        h.tick();
        assert_eq!(h.slots(20, 12), [1; 12], "{v}");
        h.out_untouched(4);
    }
}

/// The guest allocator may call no host function but logging (proxy-wasm-cpp-host's "malloc may
/// not call host functions"): one that edits the map being copied out traps with `restricted`,
/// and the map is left as it was. Logging from the allocator is allowed.
pub(crate) fn allocator_may_not_call_the_host() {
    for v in AbiVersion::ALL {
        let wat = Wat::new(v)
            .without_malloc()
            .data("xa", "x-a")
            .data("msg", "allocating")
            .func(
                "(func (export \"malloc\") (param $n i32) (result i32) (local $p i32)
    (drop (call $proxy_log (i32.const 2) {msg}))
    (if (i32.eq (call $cnt (i32.const 0)) (i32.const 1)) (then (drop (call $proxy_remove_header_map_value (i32.const 0) {xa}))))
    (local.set $p (global.get $heap))
    (global.set $heap (i32.and (i32.add (i32.add (global.get $heap) (local.get $n)) (i32.const 7)) (i32.const -8)))
    (local.get $p))",
            )
            .cb(
                "proxy_on_request_headers",
                &[
                    st(0, "(call $proxy_get_header_map_pairs (i32.const 0) {o0})"),
                    "(call $bump (i32.const 0)) (i32.const 0)".into(),
                ]
                .concat(),
            );
        let mut h = H::new(&wat);
        let id = h.stream();
        // First request: the allocator only logs.
        h.plugin.request_headers(id, headers(&[("x-a", "1")]), false).unwrap();
        assert_eq!(h.slot(0), 0, "{v}: OK");
        assert_eq!(unpairs(&h.out_bytes(0)), [("x-a".to_string(), b"1".to_vec())], "{v}");
        assert!(h.env.logs().iter().any(|r| r.message == "allocating"), "{v}");
        assert!(h.plugin.take_trap().is_none(), "{v}");
        // Second: the allocator edits the map, and traps.
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[("x-a", "1")]), false).unwrap();
        let trap = h.plugin.take_trap().expect("a trap");
        assert_eq!(trap.kind, wasmux::TrapKind::Restricted, "{v}: {trap}");
        assert!(trap.message.contains("proxy_remove_header_map_value"), "{v}: {trap}");
        assert_eq!(h.http(id).request_headers.len(), 1, "{v}: the map is untouched");
    }
}
