//! WASI preview1 (under both module names) and the two Emscripten helpers.

use wasmux::{AbiVersion, LogLevel};

use crate::harness::{CLOCK_START, Env, H, Wat, headers, st};

fn iovecs(list: &[(u32, u32)]) -> Vec<u8> {
    list.iter().flat_map(|(p, l)| p.to_le_bytes().into_iter().chain(l.to_le_bytes())).collect()
}

/// Every WASI function: stdout / stderr to the log (INFO / ERROR, one trailing newline
/// stripped), BADF for other descriptors, FAULT for bad memory, clocks from the clock service,
/// randomness with its 64 KiB cap, environment from the plugin options, no arguments,
/// `proc_exit` logged without trapping, and the documented errno of every stub.
pub(crate) fn wasi_functions() {
    for v in AbiVersion::ALL {
        let w =
            Wat::new(v).data("hello", "hello ").data("world", "world\n").data("oops", "oops\n\n").data("pw", "pw\n");
        let iov_a = iovecs(&[w.addr("hello"), w.addr("world")]);
        let iov_b = iovecs(&[w.addr("oops")]);
        let iov_c = iovecs(&[w.addr("pw")]);
        let iov_bad = iovecs(&[(0xFFFF_FFF0, 16)]);
        let w = w
            .data("iova", iov_a)
            .data("iovb", iov_b)
            .data("iovc", iov_c)
            .data("iovbad", iov_bad)
            .data("rnd", [0u8; 32])
            .data("envptrs", [0xEEu8; 16])
            .data("envbuf", [0xEEu8; 40])
            .data("stat", [0xEEu8; 24])
            .data("scratch", [0u8; 64])
            .data("path", "file.txt");
        let s = "{scratch.p}";
        let i0 = "(i64.const 0)";
        let body = [
            st(0, "(call $fd_write (i32.const 1) {iova.p} (i32.const 2) {o0.a})"),
            st(1, "(call $fd_write (i32.const 2) {iovb.p} (i32.const 1) {o1.a})"),
            st(2, "(call $fd_write (i32.const 3) {iova.p} (i32.const 2) {o2.a})"),
            st(3, "(call $fd_write (i32.const 1) {badp} (i32.const 1) {o3.a})"),
            st(4, "(call $fd_write (i32.const 1) {iovbad.p} (i32.const 1) {o3.a})"),
            st(5, "(call $fd_pwrite (i32.const 1) {iovc.p} (i32.const 1) (i64.const 99) {o4.a})"),
            st(6, "(call $fd_pwrite (i32.const 5) {iovc.p} (i32.const 1) (i64.const 0) {o4.c})"),
            st(7, "(call $clock_time_get (i32.const 0) (i64.const 1) {o5.a})"),
            st(8, "(call $clock_time_get (i32.const 1) (i64.const 1) {o6.a})"),
            st(9, "(call $clock_time_get (i32.const 2) (i64.const 1) {o7.a})"),
            st(10, "(call $clock_res_get (i32.const 0) {o8.a})"),
            st(11, "(call $clock_res_get (i32.const 3) {o9.a})"),
            st(12, "(call $random_get {rnd})"),
            st(13, "(call $random_get (i32.const 0) (i32.const 65537))"),
            st(14, "(call $random_get (i32.const 0) (i32.const 0))"),
            st(15, "(call $random_get {badp} (i32.const 16))"),
            st(16, "(call $environ_sizes_get {o10.a} {o10.b})"),
            st(17, "(call $environ_get {envptrs.p} {envbuf.p})"),
            st(18, "(call $args_sizes_get {o11.a} {o11.b})"),
            st(19, &format!("(call $args_get {s} {s})")),
            st(20, "(call $sched_yield)"),
            st(21, &format!("(call $poll_oneoff {s} {s} (i32.const 1) {{o12.a}})")),
            st(22, &format!("(call $poll_oneoff {s} {s} (i32.const 0) {{o12.b}})")),
            "(call $proc_exit (i32.const 3))".into(),
            st(23, "(i32.const 1)"),
            st(24, &format!("(call $fd_read (i32.const 0) {s} (i32.const 1) {s})")),
            st(25, &format!("(call $fd_pread (i32.const 0) {s} (i32.const 1) {i0} {s})")),
            st(26, &format!("(call $fd_seek (i32.const 1) {i0} (i32.const 0) {s})")),
            st(27, &format!("(call $fd_seek (i32.const 5) {i0} (i32.const 0) {s})")),
            st(28, "(call $fd_tell (i32.const 1) {o14.a})"),
            st(29, &format!("(call $fd_tell (i32.const 4) {s})")),
            st(30, "(call $fd_close (i32.const 1))"),
            st(31, "(call $fd_close (i32.const 7))"),
            st(32, "(call $fd_fdstat_get (i32.const 1) {stat.p})"),
            st(33, &format!("(call $fd_fdstat_get (i32.const 0) {s})")),
            st(34, "(call $fd_fdstat_set_flags (i32.const 1) (i32.const 0))"),
            st(35, &format!("(call $fd_fdstat_set_rights (i32.const 1) {i0} {i0})")),
            st(36, &format!("(call $fd_fdstat_set_rights (i32.const 3) {i0} {i0})")),
            st(37, &format!("(call $fd_advise (i32.const 9) {i0} {i0} (i32.const 0))")),
            st(38, &format!("(call $fd_allocate (i32.const 2) {i0} {i0})")),
            st(39, &format!("(call $fd_allocate (i32.const 3) {i0} {i0})")),
            st(40, "(call $fd_datasync (i32.const 1))"),
            st(41, "(call $fd_sync (i32.const 2))"),
            st(42, "(call $fd_sync (i32.const 3))"),
            st(43, &format!("(call $fd_filestat_get (i32.const 1) {s})")),
            st(44, &format!("(call $fd_filestat_set_size (i32.const 1) {i0})")),
            st(45, &format!("(call $fd_filestat_set_size (i32.const 4) {i0})")),
            st(46, &format!("(call $fd_filestat_set_times (i32.const 2) {i0} {i0} (i32.const 0))")),
            st(47, &format!("(call $fd_filestat_set_times (i32.const 5) {i0} {i0} (i32.const 0))")),
            st(48, &format!("(call $fd_readdir (i32.const 3) {s} (i32.const 0) {i0} {{o15.a}})")),
            st(49, "(call $fd_renumber (i32.const 1) (i32.const 2))"),
            st(50, &format!("(call $fd_prestat_get (i32.const 3) {s})")),
            st(51, &format!("(call $fd_prestat_dir_name (i32.const 3) {s} (i32.const 0))")),
            st(52, &format!("(call $path_open (i32.const 3) (i32.const 0) {{path}} (i32.const 0) {i0} {i0} (i32.const 0) {{o16.a}})")),
            st(53, &format!("(call $path_filestat_get (i32.const 3) (i32.const 0) {{path}} {s})")),
            st(54, &format!("(call $path_filestat_set_times (i32.const 3) (i32.const 0) {{path}} {i0} {i0} (i32.const 0))")),
            st(55, "(call $path_create_directory (i32.const 3) {path})"),
            st(56, "(call $path_remove_directory (i32.const 3) {path})"),
            st(57, "(call $path_unlink_file (i32.const 3) {path})"),
            st(58, &format!("(call $path_readlink (i32.const 3) {{path}} {s} (i32.const 8) {{o17.a}})")),
            st(59, "(call $path_rename (i32.const 3) {path} (i32.const 3) {path})"),
            st(60, "(call $path_link (i32.const 3) (i32.const 0) {path} (i32.const 3) {path})"),
            st(61, "(call $path_symlink {path} (i32.const 3) {path})"),
            st(62, "(call $sock_accept (i32.const 3) (i32.const 0) {o18.a})"),
            st(63, &format!("(call $sock_recv (i32.const 3) {s} (i32.const 0) (i32.const 0) {{o19.a}} {{o19.b}})")),
            st(64, &format!("(call $sock_send (i32.const 3) {s} (i32.const 0) (i32.const 0) {{o20.a}})")),
            st(65, "(call $sock_shutdown (i32.const 3) (i32.const 0))"),
            st(66, "(call $pthread_equal (i32.const 5) (i32.const 5))"),
            st(67, "(call $pthread_equal (i32.const 5) (i32.const 6))"),
            "(call $emscripten_notify_memory_growth (i32.const 0))".into(),
            st(68, "(i32.const 1)"),
            st(69, "(call $environ_sizes_get {badp} {o21.b})"),
            st(70, "(call $environ_get {badp} {envbuf.p})"),
            st(71, "(call $clock_time_get (i32.const 0) (i64.const 0) {badp})"),
            st(72, "(call $clock_res_get (i32.const 1) {badp})"),
            st(73, "(call $args_sizes_get {badp} {o21.b})"),
            st(74, "(call $fd_fdstat_get (i32.const 2) {badp})"),
            st(75, "(call $fd_tell (i32.const 2) {badp})"),
            st(76, &format!("(call $poll_oneoff {s} {s} (i32.const 1) {{badp}})")),
            st(77, "(call $fd_write (i32.const 1) {iova.p} (i32.const 2) {badp})"),
            "(i32.const 0)".into(),
        ]
        .concat();
        let wat = w.cb("proxy_on_request_headers", &body);
        let (rnd, _) = wat.addr("rnd");
        let (envptrs, _) = wat.addr("envptrs");
        let (envbuf, _) = wat.addr("envbuf");
        let (stat, _) = wat.addr("stat");
        let mut h = H::with(&wat, Env::default(), |o| {
            o.environment = vec![("A".into(), "1".into()), ("LONG_NAME".into(), "x y".into())];
        });
        let id = h.stream();
        h.plugin.request_headers(id, headers(&[]), true).unwrap();
        #[rustfmt::skip]
        let want = [
            0, 0, 8, 21, 21, 0, 8, 0, 0, 58, // 0..9
            0, 58, 0, 28, 0, 21, 0, 0, 0, 0, // 10..19
            0, 0, 28, 1, 52, 52, 70, 8, 0, 8, // 20..29
            0, 8, 0, 8, 52, 0, 8, 0, 0, 8, // 30..39
            0, 0, 8, 8, 0, 8, 0, 8, 8, 8, // 40..49
            8, 52, 44, 58, 58, 58, 58, 58, 58, 58, // 50..59
            58, 58, 58, 58, 58, 58, 1, 0, 1, 21, // 60..69
            21, 21, 21, 21, 21, 21, 21, 21, // 70..77
        ];
        let got = h.slots(0, want.len() as u32);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(*g, w, "{v}: slot {i}");
        }
        assert_eq!([h.out_word(0, 0), h.out_word(1, 0), h.out_word(4, 0)], [12, 6, 3], "{v}: bytes written");
        h.out_untouched(2);
        assert_eq!(h.out_word(4, 2), 0xEEEE_EEEE);
        assert_eq!((h.out_u64(5), h.out_u64(6)), (CLOCK_START, CLOCK_START), "{v}: manual clock");
        h.out_untouched(7);
        assert_eq!(h.out_u64(8), 1, "{v}: 1 ns resolution");
        assert!(h.read(rnd, 32).iter().any(|b| *b != 0), "{v}: random bytes");
        assert_eq!(h.out(10), (2, 4 + 14), "{v}: environ count and size");
        let ptrs: Vec<u8> = [envbuf, envbuf + 4].iter().flat_map(|p| p.to_le_bytes()).collect();
        assert_eq!(h.read(envptrs, 8), ptrs, "{v}: environ pointers");
        assert_eq!(h.read(envbuf, 19), b"A=1\0LONG_NAME=x y\0\xEE");
        assert_eq!(h.out(11), (0, 0), "{v}: no arguments");
        assert_eq!(h.out_word(12, 0), 1, "{v}: a clock subscription of zero timeout fires at once");
        assert_eq!(h.out_u64(14), 0, "{v}: stdio offset");
        let mut fdstat = vec![2u8, 0, 0, 0, 0, 0, 0, 0];
        fdstat.extend(64u64.to_le_bytes());
        fdstat.extend([0; 8]);
        assert_eq!(h.read(stat, 24), fdstat, "{v}: character device, FD_WRITE rights");
        for k in [15, 16, 17, 18, 20] {
            assert_eq!(h.out_word(k, 0), 0, "{v}: out area {k} zeroed");
        }
        assert_eq!(h.out(19), (0, 0));
        let logs = h.env.logs();
        assert!(logs.iter().all(|r| r.context_id == id));
        assert_eq!(
            h.env.lines(),
            [
                (LogLevel::Info, "hello world".to_string()),
                (LogLevel::Error, "oops\n".to_string()),
                (LogLevel::Info, "pw".to_string()),
                (LogLevel::Error, "proc_exit(3)".to_string()),
            ],
            "{v}"
        );
    }
}

/// The `wasi_unstable` module name works like `wasi_snapshot_preview1`; an empty environment
/// is (0, 0) and writes nothing; stdout is subject to the host log level like `proxy_log`.
pub(crate) fn wasi_environment_and_unstable_module() {
    let w = Wat::new(AbiVersion::V0_1_0).data("line", "line\n");
    let iov = iovecs(&[w.addr("line")]);
    let wat = w
        .data("iov", iov)
        .data("envptrs", [0xEEu8; 8])
        .data("envbuf", [0xEEu8; 8])
        .import(r#"(import "wasi_unstable" "fd_write" (func $u_fd_write (param i32 i32 i32 i32) (result i32)))"#)
        .import(
            r#"(import "wasi_unstable" "environ_sizes_get" (func $u_environ_sizes_get (param i32 i32) (result i32)))"#,
        )
        .cb(
            "proxy_on_request_headers",
            &[
                st(0, "(call $u_fd_write (i32.const 1) {iov.p} (i32.const 1) {o0.a})"),
                st(1, "(call $u_fd_write (i32.const 2) {iov.p} (i32.const 1) {o1.a})"),
                st(2, "(call $u_environ_sizes_get {o2.a} {o2.b})"),
                st(3, "(call $environ_get {envptrs.p} {envbuf.p})"),
                st(4, "(call $fd_write (i32.const 2) {iov.p} (i32.const 0) {o3.a})"),
                "(i32.const 0)".into(),
            ]
            .concat(),
        );
    let (envptrs, _) = wat.addr("envptrs");
    let (envbuf, _) = wat.addr("envbuf");
    let mut h = H::with(&wat, Env::default(), |o| o.log_level = LogLevel::Warn);
    let id = h.stream();
    h.plugin.request_headers(id, headers(&[]), true).unwrap();
    assert_eq!(h.slots(0, 5), [0, 0, 0, 0, 0]);
    assert_eq!((h.out_word(0, 0), h.out_word(1, 0), h.out_word(3, 0)), (5, 5, 0));
    assert_eq!(h.out(2), (0, 0));
    assert_eq!(h.read(envptrs, 8), [0xEE; 8], "nothing written");
    assert_eq!(h.read(envbuf, 8), [0xEE; 8], "nothing written");
    // Like proxy-wasm-cpp-host (`writevImpl` logs only when something was written), a
    // zero-length write must not produce an empty log line.
    assert_eq!(
        h.env.lines(),
        [(LogLevel::Error, "line".to_string())],
        "stdout below the level is dropped; an empty write logs nothing"
    );
}

/// One WASI subscription (48 bytes): a clock (`tag` 0: clock `id`, `timeout`, `flags`) or an
/// fd (`tag` 1 or 2).
fn subscription(userdata: u64, tag: u8, id: u32, timeout: u64, flags: u16) -> Vec<u8> {
    let mut s = vec![0u8; 48];
    s[..8].copy_from_slice(&userdata.to_le_bytes());
    s[8] = tag;
    s[16..20].copy_from_slice(&id.to_le_bytes());
    s[24..32].copy_from_slice(&timeout.to_le_bytes());
    s[40..42].copy_from_slice(&flags.to_le_bytes());
    s
}

/// `poll_oneoff` never blocks: the soonest clock subscription fires at once, and the clock
/// service is told of the wait, so under a manual clock (scenarios) a guest that sleeps sees its
/// time pass, by exactly the wait. Later clock subscriptions get no event; fd subscriptions get
/// BADF events; an absolute deadline already passed fires without moving the clock.
pub(crate) fn poll_oneoff_lets_virtual_time_pass() {
    let v = AbiVersion::V0_2_1;
    let relative: Vec<u8> = [
        subscription(0x11, 0, 1, 5_000_000, 0),
        subscription(0x22, 0, 1, 9_000_000, 0),
        subscription(0x33, 1, 0, 0, 0),
    ]
    .concat();
    let passed = subscription(0x44, 0, 0, 1, 1);
    let wat = Wat::new(v).data("rel", &relative).data("abs", &passed).data("events", [0u8; 4 * 32]).cb(
        "proxy_on_request_headers",
        &[
            st(0, "(call $poll_oneoff {rel.p} {events.p} (i32.const 3) {o0.a})"),
            st(1, "(call $clock_time_get (i32.const 1) (i64.const 1) {o1.a})"),
            st(2, "(call $poll_oneoff {rel.p} {events.p} (i32.const 0) {o0.b})"),
            st(3, "(call $poll_oneoff {rel.p} {events.p} (i32.const 5000) {o0.b})"),
            st(4, "(call $poll_oneoff {abs.p} {events.p} (i32.const 1) {o2.a})"),
            st(5, "(call $clock_time_get (i32.const 1) (i64.const 1) {o3.a})"),
            "(i32.const 0)".into(),
        ]
        .concat(),
    );
    let (events, _) = wat.addr("events");
    let mut h = H::new(&wat);
    let id = h.stream();
    h.plugin.request_headers(id, headers(&[]), true).unwrap();
    assert_eq!(h.slots(0, 6), [0, 0, 28, 28, 0, 0], "OK, OK, INVAL for no and for too many subscriptions, OK, OK");
    assert_eq!(h.out_word(0, 0), 2, "the soonest clock and the fd");
    assert_eq!(h.out_u64(1), CLOCK_START + 5_000_000, "the manual clock moved by the soonest wait");
    assert_eq!(h.out_word(2, 0), 1, "a passed absolute deadline fires");
    assert_eq!(h.out_u64(3), CLOCK_START + 5_000_000, "without moving the clock");
    let ev = h.read(events, 32);
    assert_eq!((u64::from_le_bytes(ev[..8].try_into().unwrap()), ev[10]), (0x44, 0), "the last call's event");
}
