;; unreachable in proxy_on_downstream_data: the record names the trap on that event.
(module
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
  (func (export "proxy_on_downstream_data") (param i32 i32 i32) (result i32) (local $i i32)
    unreachable
    (i32.const 0)))
