;; Serialized header maps whose count claims 2^28 and 2^31 - 1 pairs in 8 bytes (a host that
;; reserves room for the count first allocates gigabytes), given to proxy_set_header_map_pairs
;; and to proxy_http_call, 10^4 times each.
(module
  (import "env" "proxy_set_header_map_pairs" (func $proxy_set_header_map_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $proxy_http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "k")
  (data (i32.const 20) "v")
  (data (i32.const 24) "up")
  (data (i32.const 64) "\00\00\00\10\ff\ff\ff\ff")
  (data (i32.const 72) "\ff\ff\ff\7f\01\00\00\00")
  (global $bump (mut i32) (i32.const 32768))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (local.get $p) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (local $i i32)
    (loop $l
      (drop (call $proxy_set_header_map_pairs (i32.const 0) (i32.const 64) (i32.const 8)))
      (drop (call $proxy_set_header_map_pairs (i32.const 0) (i32.const 72) (i32.const 8)))
      (drop (call $proxy_http_call (i32.const 24) (i32.const 2) (i32.const 72) (i32.const 8) (i32.const 0) (i32.const 0) (i32.const 72) (i32.const 8) (i32.const 1000) (i32.const 1024)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 10000))))
    (i32.const 0)))
