;; The guest allocator calls proxy_get_header_map_value, whose copy-out calls the allocator,
;; which calls the host again, ... The host must refuse host calls from inside the allocator
;; (a `restricted` trap) instead of recursing until its native stack overflows.
(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "a")
  (global $bump (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (drop (call $get (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 32) (i32.const 36)))
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (local.get $p) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $get (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 32) (i32.const 36)))
    (i32.const 0)))
