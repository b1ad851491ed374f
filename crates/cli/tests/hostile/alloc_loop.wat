;; A guest allocator that never returns, called by the host during proxy_get_header_map_value:
;; the callback deadline (100 ms) covers guest code the host calls back into.
(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "a")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32)
    (loop $l (br $l))
    (i32.const 0))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $get (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 32) (i32.const 36)))
    (i32.const 0)))
