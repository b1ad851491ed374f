;; 10^6 properties set under distinct paths: the property quota refuses them.
(module
  (import "env" "proxy_set_property" (func $proxy_set_property (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "k")
  (data (i32.const 20) "v")
  (global $bump (mut i32) (i32.const 32768))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (local.get $p) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  ;; $name writes 8 letters spelling $i at 2048: a distinct name per iteration.
  (func $name (param $i i32) (local $k i32)
    (loop $l
      (i32.store8 (i32.add (i32.const 2048) (local.get $k))
        (i32.add (i32.const 97) (i32.and (i32.shr_u (local.get $i) (i32.shl (local.get $k) (i32.const 2))) (i32.const 15))))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $k) (i32.const 8)))))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (local $i i32)
    (loop $l
      (call $name (local.get $i))
      (drop (call $proxy_set_property (i32.const 2048) (i32.const 8) (i32.const 20) (i32.const 1)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 1000000))))
    (i32.const 0)))
