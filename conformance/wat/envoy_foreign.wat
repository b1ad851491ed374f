;; Envoy's foreign functions: compress and uncompress, set_envoy_filter_state read back as the
;; filter_state property, declare_property, canned functions from the scenario, an unknown name.
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_call_foreign_function" (func $ff (param i32 i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)
  (global $bump (mut i32) (i32.const 4096))
  (data (i32.const 100) "compress")
  (data (i32.const 110) "uncompress")
  (data (i32.const 121) "set_envoy_filter_state")
  (data (i32.const 144) "declare_property")
  (data (i32.const 161) "verify_signature")
  (data (i32.const 178) "failing")
  (data (i32.const 186) "nope")
  ;; 200: text to compress (33 bytes)
  (data (i32.const 200) "hello hello hello hello hello wow")
  ;; 240: SetEnvoyFilterStateArguments{path: "my.key", value: "v1", span: DownstreamRequest}
  (data (i32.const 240) "\0a\06my.key\12\02v1\18\01")
  ;; 260: DeclarePropertyArguments{name: "prop", readonly: true}
  (data (i32.const 260) "\0a\04prop\10\01")
  ;; 270: filter_state NUL my.key (19 bytes)
  (data (i32.const 270) "filter_state\00my.key")
  (data (i32.const 400) "declared")
  (data (i32.const 410) "failing: internal failure")
  (data (i32.const 440) "nope: not found")
  (data (i32.const 460) "unexpected status")
  ;; 300/304: returned pointer and length
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func $log_out (drop (call $log (i32.const 2) (i32.load (i32.const 300)) (i32.load (i32.const 304)))))
  (func $expect (param $got i32) (param $want i32) (param $msg i32) (param $len i32)
    (if (i32.eq (local.get $got) (local.get $want))
      (then (drop (call $log (i32.const 2) (local.get $msg) (local.get $len))))
      (else (drop (call $log (i32.const 4) (i32.const 460) (i32.const 17))))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    ;; compress, then uncompress what came back: the text again.
    (call $expect (call $ff (i32.const 100) (i32.const 8) (i32.const 200) (i32.const 33) (i32.const 300) (i32.const 304)) (i32.const 0) (i32.const 0) (i32.const 0))
    (call $expect (call $ff (i32.const 110) (i32.const 10) (i32.load (i32.const 300)) (i32.load (i32.const 304)) (i32.const 300) (i32.const 304)) (i32.const 0) (i32.const 0) (i32.const 0))
    (call $log_out)
    ;; uncompress of bytes that are not zlib: SERIALIZATION_FAILURE (3).
    (call $expect (call $ff (i32.const 110) (i32.const 10) (i32.const 200) (i32.const 33) (i32.const 300) (i32.const 304)) (i32.const 3) (i32.const 0) (i32.const 0))
    ;; filter state, read back as a property.
    (call $expect (call $ff (i32.const 121) (i32.const 22) (i32.const 240) (i32.const 14) (i32.const 0) (i32.const 0)) (i32.const 0) (i32.const 0) (i32.const 0))
    (call $expect (call $get_property (i32.const 270) (i32.const 19) (i32.const 300) (i32.const 304)) (i32.const 0) (i32.const 0) (i32.const 0))
    (call $log_out)
    ;; A malformed SetEnvoyFilterStateArguments: BAD_ARGUMENT (2).
    (call $expect (call $ff (i32.const 121) (i32.const 22) (i32.const 240) (i32.const 5) (i32.const 0) (i32.const 0)) (i32.const 2) (i32.const 0) (i32.const 0))
    (call $expect (call $ff (i32.const 144) (i32.const 16) (i32.const 260) (i32.const 8) (i32.const 0) (i32.const 0)) (i32.const 0) (i32.const 400) (i32.const 8))
    ;; Canned by the scenario.
    (call $expect (call $ff (i32.const 161) (i32.const 16) (i32.const 200) (i32.const 5) (i32.const 300) (i32.const 304)) (i32.const 0) (i32.const 0) (i32.const 0))
    (call $log_out)
    (call $expect (call $ff (i32.const 178) (i32.const 7) (i32.const 200) (i32.const 5) (i32.const 300) (i32.const 304)) (i32.const 10) (i32.const 410) (i32.const 25))
    (call $expect (call $ff (i32.const 186) (i32.const 4) (i32.const 200) (i32.const 5) (i32.const 300) (i32.const 304)) (i32.const 1) (i32.const 440) (i32.const 15))
    (i32.const 0))
)
