;; The same recursion at configuration time: proxy_on_configure reads its configuration, the
;; copy-out calls proxy_on_memory_allocate, which reads the configuration again.
(module
  (import "env" "proxy_get_buffer_bytes" (func $buf (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $bump (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32) (local $p i32)
    (drop (call $buf (i32.const 7) (i32.const 0) (i32.const 100) (i32.const 32) (i32.const 36)))
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (local.get $p) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $buf (i32.const 7) (i32.const 0) (i32.const 100) (i32.const 32) (i32.const 36)))
    (i32.const 1)))
