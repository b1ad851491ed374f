;; fd_write to stdout with iovecs that all point at one 8 MiB buffer, 100 times: 1024 of them
;; (8 GiB, more than the u32 count can say) and 500 (about 4 GiB); lines are truncated like
;; proxy_log's.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
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
      (i32.store (i32.add (i32.const 8192) (i32.shl (local.get $i) (i32.const 3))) (i32.const 65536))
      (i32.store (i32.add (i32.const 8196) (i32.shl (local.get $i) (i32.const 3))) (i32.const 8388608))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 1024))))
    (local.set $i (i32.const 0))
    (loop $l
      (drop (call $fd_write (i32.const 1) (i32.const 8192) (i32.const 1024) (i32.const 4096)))
      (drop (call $fd_write (i32.const 1) (i32.const 8192) (i32.const 500) (i32.const 4096)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 100))))
    (i32.const 0)))
