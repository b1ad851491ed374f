;; A loop of cheap host calls that never ends, under a 100 ms deadline: stopped at the deadline
;; like a pure wasm loop.
(module
  (import "env" "proxy_get_log_level" (func $proxy_get_log_level (param i32) (result i32)))
  (import "env" "proxy_get_current_time_nanoseconds" (func $proxy_get_current_time_nanoseconds (param i32) (result i32)))
  (import "env" "proxy_get_header_map_size" (func $proxy_get_header_map_size (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "k")
  (data (i32.const 20) "v")
  (global $bump (mut i32) (i32.const 32768))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (local.get $p) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (local $i i32)
    (loop $l
      (drop (call $proxy_get_log_level (i32.const 1024)))
      (drop (call $proxy_get_current_time_nanoseconds (i32.const 1032)))
      (drop (call $proxy_get_header_map_size (i32.const 0) (i32.const 1040)))
      (br $l))
    (i32.const 0)))
