;; proxy_send_local_response with an 8 MiB body and 8 MiB details, 10^5 times: each reply
;; replaces the last; the host must not keep them all.
(module
  (import "env" "proxy_send_local_response" (func $proxy_send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 130)
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
    (memory.fill (i32.const 65536) (i32.const 97) (i32.const 8388608))
    (loop $l
      (drop (call $proxy_send_local_response (i32.const 500) (i32.const 65536) (i32.const 8388608) (i32.const 65536) (i32.const 8388608) (i32.const 0) (i32.const 0) (i32.const -1)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 100000))))
    (i32.const 0)))
