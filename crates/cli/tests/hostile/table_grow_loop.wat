;; table.grow in a loop: growth must fail (-1) at the table limit (50 000 elements here); the
;; probe then checks the table never went past it (unreachable if it did) and returns.
(module
  (table $t 1 funcref)
  (memory (export "memory") 1)
  (global $bump (mut i32) (i32.const 4096))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "malloc") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (local.get $p) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    ;; One huge step first: refused.
    (if (i32.ne (table.grow $t (ref.null func) (i32.const 0x7fffffff)) (i32.const -1)) (then unreachable))
    (if (i32.ne (table.grow $t (ref.null func) (i32.const 60000)) (i32.const -1)) (then unreachable))
    ;; Then small steps until refused.
    (block $full
      (loop $l
        (br_if $full (i32.eq (table.grow $t (ref.null func) (i32.const 1000)) (i32.const -1)))
        (br $l)))
    (if (i32.gt_u (table.size $t) (i32.const 50000)) (then unreachable))
    (i32.const 0)))
