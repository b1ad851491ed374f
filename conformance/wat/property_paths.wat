;; Property paths whose segments hold dots, map-valued properties, hidden properties and initial
;; shared data, read from proxy_on_request_headers.
(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 1)
  (global $bump (mut i32) (i32.const 4096))
  ;; 100: metadata NUL filter_metadata NUL envoy.filters.http.lua NUL key (51 bytes)
  (data (i32.const 100) "metadata\00filter_metadata\00envoy.filters.http.lua\00key")
  ;; 160: request NUL path (12 bytes)
  (data (i32.const 160) "request\00path")
  ;; 176: node NUL metadata (13 bytes)
  (data (i32.const 176) "node\00metadata")
  ;; 192: "seed", 200: "map"
  (data (i32.const 192) "seed")
  (data (i32.const 200) "map")
  ;; 208: messages
  (data (i32.const 208) "missing")
  (data (i32.const 224) "hidden: not found")
  (data (i32.const 256) "hidden: found")
  ;; 300/304: returned pointer and length; 308: CAS
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32) (local $p i32)
    (local.set $p (global.get $bump))
    (global.set $bump (i32.add (global.get $bump) (i32.and (i32.add (local.get $n) (i32.const 7)) (i32.const -8))))
    (local.get $p))
  (func (export "proxy_on_context_create") (param i32 i32))
  ;; Logs the returned value, or "missing" for any status but OK.
  (func $log_result (param $status i32)
    (if (i32.eqz (local.get $status))
      (then (drop (call $log (i32.const 2) (i32.load (i32.const 300)) (i32.load (i32.const 304)))))
      (else (drop (call $log (i32.const 2) (i32.const 208) (i32.const 7))))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    ;; A segment with dots.
    (call $log_result (call $get_property (i32.const 100) (i32.const 51) (i32.const 300) (i32.const 304)))
    ;; A property wasmux derives, hidden by the scenario.
    (if (i32.eq (call $get_property (i32.const 160) (i32.const 12) (i32.const 300) (i32.const 304)) (i32.const 1))
      (then (drop (call $log (i32.const 2) (i32.const 224) (i32.const 17))))
      (else (drop (call $log (i32.const 2) (i32.const 256) (i32.const 13)))))
    ;; A map: copied to shared data "map" for the record.
    (if (i32.eqz (call $get_property (i32.const 176) (i32.const 13) (i32.const 300) (i32.const 304)))
      (then (drop (call $set_shared (i32.const 200) (i32.const 3) (i32.load (i32.const 300)) (i32.load (i32.const 304)) (i32.const 0)))))
    ;; Shared data the scenario seeded.
    (call $log_result (call $get_shared (i32.const 192) (i32.const 4) (i32.const 300) (i32.const 304) (i32.const 308)))
    (i32.const 0))
)
