;; The host-call benchmark module, shared by `cargo bench --bench hostcall` and `wasmux bench`
;; (`empty_callback`, `host_call`): a guest loop that calls `proxy_get_header_map_value` `n`
;; times, and an empty export.
(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "x-key")
  (func (export "proxy_abi_version_0_2_1"))
  ;; An allocator that recycles one scratch area: the benchmark never frees.
  (func (export "malloc") (param $n i32) (result i32) (i32.const 4096))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 0))
  (func (export "empty"))
  (func (export "bench_get") (param $n i32) (result i32)
    (local $acc i32)
    (block $done
      (loop $l
        (br_if $done (i32.eqz (local.get $n)))
        ;; map 0 = request headers, key at 16 (5 bytes), out pointers at 64 and 72
        (local.set $acc (i32.add (local.get $acc)
          (call $get (i32.const 0) (i32.const 16) (i32.const 5) (i32.const 64) (i32.const 72))))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $l)))
    (local.get $acc)))
