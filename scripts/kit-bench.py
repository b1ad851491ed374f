#!/usr/bin/env python3
"""Writes the benchmark files of the test kit (`wasmux test`) into a directory:

  kit50.yaml        50 tests on the headers fixture (25 passed through, 25 denied), every kind
                    of expectation the headers filter allows; for `time wasmux test kit50.yaml`
  per-request.yaml  one test of 100 requests (create, request headers, response headers,
                    finish); `wasmux test per-request.yaml --engine wasmtime --bench 30`
                    prints the median time per request

Usage: scripts/kit-bench.py OUTDIR, then for example
  target/release/wasmux test OUTDIR/kit50.yaml
  target/release/wasmux test OUTDIR/per-request.yaml --engine wasmtime --bench 30
"""
import os
import sys

repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
out = sys.argv[1] if len(sys.argv) > 1 else sys.exit(__doc__)
os.makedirs(out, exist_ok=True)
module = os.path.join(repo, "conformance/fixtures/wasm/headers.wasip1.wasm")
native = os.path.join(repo, "conformance/fixtures/target/x86_64-unknown-linux-gnu/release/libfixture_headers.so")
head = f"module: {module}\nnative: {native}\ntests:\n"

tests = []
for i in range(25):
    tests.append(f"""  - name: allowed {i}
    events:
      - {{event: http_stream, stream: a}}
      - event: request_headers
        stream: a
        headers: [[":method", GET], [":path", /p{i}], [user-agent, curl/8], [x-remove-me, 1]]
        expect:
          action: continue
          request_headers: {{has: {{x-wasmux-request: seen}}, absent: [x-remove-me]}}
          logs: [{{level: info, message: "request path: /p{i}"}}]
      - event: response_headers
        stream: a
        headers: [[":status", 200], [server, upstream], [x-powered-by, php]]
        expect: {{response_headers: {{has: {{server: wasmux}}, absent: [x-powered-by]}}}}
      - {{event: finish, stream: a}}
    expect:
      streams: {{a: {{no_local_reply: true, finished: done}}}}
""")
    tests.append(f"""  - name: denied {i}
    events:
      - {{event: http_stream, stream: d}}
      - event: request_headers
        stream: d
        headers: [[":method", GET], [":path", /deny]]
        end_of_stream: true
        expect: {{action: pause}}
      - {{event: finish, stream: d}}
    expect:
      streams: {{d: {{local_reply: {{status: 403, body: {{regex: "^denied"}}}}}}}}
""")
with open(os.path.join(out, "kit50.yaml"), "w") as f:
    f.write(head + "".join(tests))

events = []
for i in range(100):
    s = f"s{i}"
    events.append(f"      - {{event: http_stream, stream: {s}}}\n")
    events.append(f'      - {{event: request_headers, stream: {s}, headers: [[":method", GET], [":path", /hello], [":authority", example.com], [user-agent, curl/8]]}}\n')
    events.append(f'      - {{event: response_headers, stream: {s}, headers: [[":status", 200], [server, upstream], [content-type, text/plain]]}}\n')
    events.append(f"      - {{event: finish, stream: {s}}}\n")
with open(os.path.join(out, "per-request.yaml"), "w") as f:
    f.write(f"module: {module}\ntests:\n  - name: 100 requests\n    log_level: warn\n    events:\n" + "".join(events))
print(f"wrote {out}/kit50.yaml and {out}/per-request.yaml")
