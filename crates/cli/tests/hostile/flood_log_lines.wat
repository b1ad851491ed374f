;; 2 x 10^6 one-byte proxy_log lines from one callback, default limits: the log quota per
;; callback (1 MiB) must bound what the host keeps, lines included, not only their bytes.
(module
  (import "env" "proxy_log" (func $proxy_log (param i32 i32 i32) (result i32)))
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
      (drop (call $proxy_log (i32.const 2) (i32.const 16) (i32.const 1)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 2000000))))
    (i32.const 0)))
