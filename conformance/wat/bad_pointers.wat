;; out-of-range pointers to proxy_log and proxy_get_header_map_value: each must return 6 (INVALID_MEMORY_ACCESS), logged as `status 6`.
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $tick (param i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_hdr (param i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)
  (global $bump (mut i32) (i32.const 4096))
  ;; 16: messages
  (data (i32.const 16) "status 6")
  (data (i32.const 32) "unexpected status")
  (data (i32.const 64) "up")
  (data (i32.const 80) ":path")
  (data (i32.const 96) "reached")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32) (local $p i32) (local.set $p (global.get $bump)) (global.set $bump (i32.add (global.get $bump) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8)))) (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $tick (i32.const 10)))
    (i32.const 1))
  ;; logs "status 6" (info) when $s is 6, else "unexpected status" (error)
  (func $expect6 (param $s i32)
    (if (i32.eq (local.get $s) (i32.const 6))
      (then (drop (call $log (i32.const 2) (i32.const 16) (i32.const 8))))
      (else (drop (call $log (i32.const 4) (i32.const 32) (i32.const 17))))))

  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    ;; message out of range
    (call $expect6 (call $log (i32.const 2) (i32.const 0xFFFFFFF0) (i32.const 100)))
    ;; key out of range
    (call $expect6 (call $get_hdr (i32.const 0) (i32.const 0xFFFFFF00) (i32.const 5) (i32.const 200) (i32.const 204)))
    ;; result pointers out of range
    (call $expect6 (call $get_hdr (i32.const 0) (i32.const 80) (i32.const 5) (i32.const 0xFFFFFFF0) (i32.const 0xFFFFFFF8)))
    (drop (call $log (i32.const 2) (i32.const 96) (i32.const 7)))
    (i32.const 0))
)
