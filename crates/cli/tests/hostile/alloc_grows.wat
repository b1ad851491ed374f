;; A guest allocator that grows memory on every call (V8 may move the memory when it grows): the
;; host must write each copied value where the allocator said, through a fresh view of memory.
;; The probe checks 50 copies of the header `a: b` and is unreachable if one is wrong.
(module
  (import "env" "proxy_get_header_map_value" (func $get (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "a")
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.eq (memory.grow (i32.add (i32.shr_u (local.get $n) (i32.const 16)) (i32.const 1))) (i32.const -1))
      (then unreachable))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (local $i i32)
    (loop $l
      (if (i32.ne (call $get (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 32) (i32.const 36)) (i32.const 0))
        (then unreachable))
      (if (i32.ne (i32.load (i32.const 36)) (i32.const 1)) (then unreachable))
      (if (i32.ne (i32.load8_u (i32.load (i32.const 32))) (i32.const 98)) (then unreachable))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 50))))
    (i32.const 0)))
