// The C++ half of wasmux-v8: everything that touches the V8 C++ API, behind a small C ABI that
// src/ffi.rs declares. Written for V8 10.2 as shipped in Debian's libnode108.
//
// Rules:
// - No C++ exception leaves this file: every exported function is noexcept and catches
//   everything; V8 itself is built without exceptions.
// - Rust never sees a V8 handle: the compiler, compiled modules and instances are opaque.
// - Strings for error reports go back through a sink callback, so no allocation crosses the
//   boundary.
// - One isolate per instance. An instance keeps its isolate and context entered on the thread
//   that last used it (see `Entry`), so a call from the same thread does not pay for
//   Isolate::Enter/Exit, which take a mutex and allocate.

#include <pthread.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include <libplatform/libplatform.h>
#include <v8.h>

namespace {

// ---------------------------------------------------------------------------------------------
// Codes shared with src/ffi.rs.

// Value types.
constexpr uint8_t kI32 = 0;
constexpr uint8_t kI64 = 1;
constexpr uint8_t kF32 = 2;
constexpr uint8_t kF64 = 3;

// Status of an exported function.
constexpr int32_t kOk = 0;
constexpr int32_t kException = 1;   // JS exception (trap, link error, ...): see the report
constexpr int32_t kTerminated = 2;  // TerminateExecution stopped the call
constexpr int32_t kFailed = 3;      // bridge failure (bad argument, out of memory, ...)

// Report tags.
constexpr uint32_t kTagClass = 0;    // constructor name of the exception, e.g. RuntimeError
constexpr uint32_t kTagMessage = 1;  // its message
constexpr uint32_t kTagFrame = 2;    // one wasm frame (function name, may be empty), innermost first

// The most parameters or results a function may have to cross the bridge.
constexpr size_t kMaxValues = 16;

// The host function index the growth hook reports a `memory.grow` under.
constexpr uint32_t kGrowNote = 0xffffffff;

// (module (type (func (param i32 i32 i32))) (import "h" "n" (func (type 0)))
//         (export "n" (func 0))):
// turns a JS function into a wasm function that can be stored in a funcref table.
constexpr uint8_t kHookWrapper[] = {
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,              // header
    0x01, 0x07, 0x01, 0x60, 0x03, 0x7f, 0x7f, 0x7f, 0x00,        // type
    0x02, 0x07, 0x01, 0x01, 0x68, 0x01, 0x6e, 0x00, 0x00,        // import
    0x07, 0x05, 0x01, 0x01, 0x6e, 0x00, 0x00};                   // export

}  // namespace

extern "C" {
typedef void (*wx_sink_fn)(void* ctx, uint32_t tag, const uint8_t* ptr, size_t len);
typedef int32_t (*wx_host_fn)(void* state, uint32_t func, const uint64_t* args, uint32_t nargs,
                              uint64_t* result);

struct wx_import {
  const uint8_t* module;
  size_t module_len;
  const uint8_t* name;
  size_t name_len;
  uint32_t host_func;
  const uint8_t* params;
  uint32_t n_params;
  const uint8_t* results;
  uint32_t n_results;
};

struct wx_memory {
  uint32_t present;  // 0: the module defines no memory of its own to provide
  uint32_t initial;  // pages
  uint32_t maximum;  // pages
};

// Exports the module rewrite (src/rewrite.rs) added; an empty name means absent.
struct wx_hooks {
  const uint8_t* grow_table;  // table whose entry 0 receives the memory growth hook
  size_t grow_table_len;
  const uint8_t* table_limit;  // mutable i32 global that receives `table_limit_value`
  size_t table_limit_len;
  uint32_t table_limit_value;
  const uint8_t* start;  // the module's start function, called last
  size_t start_len;
};
}

namespace {

// ---------------------------------------------------------------------------------------------
// Process-wide state.

std::once_flag g_init_once;
// Never destroyed: isolates that outlive `main` (leaked, or owned by detached threads) must not
// find their platform gone during static destruction.
v8::Platform* g_platform = nullptr;
v8::ArrayBuffer::Allocator* g_allocator = nullptr;
wx_host_fn g_host = nullptr;

// The isolate data slot holding the instance, for host callbacks.
constexpr uint32_t kInstanceSlot = 0;

// Stack a compile may use (V8 decodes function bodies iteratively; this is generous).
constexpr size_t kCompileStack = 512 * 1024;

struct Sink {
  void* ctx;
  wx_sink_fn fn;
  void Put(uint32_t tag, const char* ptr, size_t len) const {
    if (fn != nullptr) fn(ctx, tag, reinterpret_cast<const uint8_t*>(ptr), len);
  }
  void Put(uint32_t tag, v8::Isolate* isolate, v8::Local<v8::Value> value) const {
    if (value.IsEmpty()) return Put(tag, "", 0);
    v8::String::Utf8Value s(isolate, value);
    if (*s == nullptr) return Put(tag, "", 0);
    Put(tag, *s, static_cast<size_t>(s.length()));
  }
};

v8::Local<v8::String> Str(v8::Isolate* isolate, const uint8_t* ptr, size_t len) {
  return v8::String::NewFromUtf8(isolate, reinterpret_cast<const char*>(ptr),
                                 v8::NewStringType::kNormal, static_cast<int>(len))
      .ToLocalChecked();
}

v8::Local<v8::String> Str(v8::Isolate* isolate, const char* s) {
  return v8::String::NewFromUtf8(isolate, s, v8::NewStringType::kInternalized).ToLocalChecked();
}

// Sets the isolate's JS/wasm stack limit for the calling thread: `max_stack` below the current
// position, but never closer than a reserve to the thread's real stack end, so native code
// (host functions, V8's runtime) always has room below the limit.
void SetStackLimit(v8::Isolate* isolate, size_t max_stack) {
  char here = 0;
  uintptr_t sp = reinterpret_cast<uintptr_t>(&here);
  uintptr_t limit = sp > max_stack ? sp - max_stack : 0;
  pthread_attr_t attr;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    void* addr = nullptr;
    size_t size = 0;
    if (pthread_attr_getstack(&attr, &addr, &size) == 0 && addr != nullptr) {
      size_t reserve = std::min<size_t>(std::max<size_t>(size / 8, 64 * 1024), 256 * 1024);
      uintptr_t floor = reinterpret_cast<uintptr_t>(addr) + reserve;
      limit = std::max(limit, floor);
    }
    pthread_attr_destroy(&attr);
  } else {
    // Unknown stack bounds: stay within what V8 itself assumes (about 1 MB).
    limit = std::max(limit, sp - std::min<size_t>(max_stack, 900 * 1024));
  }
  isolate->SetStackLimit(limit);
}

// Reports a caught exception: its class, message and wasm frames.
int32_t Failure(v8::Isolate* isolate, v8::Local<v8::Context> context, const v8::TryCatch& tc,
                const Sink& sink) {
  if (tc.HasTerminated() || isolate->IsExecutionTerminating()) return kTerminated;
  if (!tc.HasCaught()) return kFailed;
  v8::Local<v8::Value> exception = tc.Exception();
  if (!exception->IsNativeError()) {
    // Not an Error: the bridge's own marker thrown by a failing host function, or a value a
    // foreign module threw. Report its type only (no JS runs here).
    sink.Put(kTagClass, "", 0);
    sink.Put(kTagMessage, isolate, exception->TypeOf(isolate));
    return kException;
  }
  v8::Local<v8::Object> error = exception.As<v8::Object>();
  sink.Put(kTagClass, isolate, error->GetConstructorName());
  v8::Local<v8::Value> message;
  // `message` is an own data property of every native error: no JS runs.
  if (error->Get(context, Str(isolate, "message")).ToLocal(&message) && message->IsString()) {
    sink.Put(kTagMessage, isolate, message);
  } else {
    sink.Put(kTagMessage, "", 0);
  }
  v8::Local<v8::StackTrace> trace = v8::Exception::GetStackTrace(exception);
  if (!trace.IsEmpty()) {
    int n = trace->GetFrameCount();
    for (int i = 0; i < n; i++) {
      v8::Local<v8::StackFrame> frame = trace->GetFrame(isolate, static_cast<uint32_t>(i));
      if (frame->IsWasm()) sink.Put(kTagFrame, isolate, frame->GetFunctionName());
    }
  }
  return kException;
}

v8::Local<v8::Value> ToJs(v8::Isolate* isolate, uint8_t ty, uint64_t raw) {
  switch (ty) {
    case kI64:
      return v8::BigInt::New(isolate, static_cast<int64_t>(raw));
    case kF32: {
      uint32_t bits = static_cast<uint32_t>(raw);
      float f;
      std::memcpy(&f, &bits, sizeof f);
      return v8::Number::New(isolate, f);
    }
    case kF64: {
      double d;
      std::memcpy(&d, &raw, sizeof d);
      return v8::Number::New(isolate, d);
    }
    default:
      return v8::Integer::New(isolate, static_cast<int32_t>(static_cast<uint32_t>(raw)));
  }
}

// Converts a value wasm handed over (typed by the signature, so no JS conversion runs).
uint64_t FromJs(v8::Local<v8::Value> value, uint8_t ty) {
  switch (ty) {
    case kI64:
      return value->IsBigInt() ? static_cast<uint64_t>(value.As<v8::BigInt>()->Int64Value()) : 0;
    case kF32: {
      float f = value->IsNumber() ? static_cast<float>(value.As<v8::Number>()->Value()) : 0.0f;
      uint32_t bits;
      std::memcpy(&bits, &f, sizeof bits);
      return bits;
    }
    case kF64: {
      double d = value->IsNumber() ? value.As<v8::Number>()->Value() : 0.0;
      uint64_t bits;
      std::memcpy(&bits, &d, sizeof bits);
      return bits;
    }
    default:
      if (value->IsInt32()) return static_cast<uint32_t>(value.As<v8::Int32>()->Value());
      if (value->IsUint32()) return value.As<v8::Uint32>()->Value();
      return 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Instances.

// A resolved function export; empty until resolved. Its type is kept inline (no allocation).
struct Export {
  v8::Global<v8::Function> fn;
  uint8_t params[kMaxValues] = {};
  uint32_t n_params = 0;
  uint8_t result = 0;  // the type of the first result, when there is one
  uint32_t n_results = 0;
};

struct Import {
  uint32_t host_func;
  std::vector<uint8_t> params;
  std::vector<uint8_t> results;
};

struct Instance {
  v8::Isolate* isolate = nullptr;
  v8::Global<v8::Context> context;
  v8::Global<v8::Object> exports;
  v8::Global<v8::WasmMemoryObject> memory;  // the exported `memory`, if any
  v8::Global<v8::ArrayBuffer> buffer;       // its buffer when `base`/`length` were read
  uint8_t* base = nullptr;
  size_t length = 0;
  std::vector<Export> funcs;
  std::vector<Import> imports;
  void* state = nullptr;  // the Rust side's instance state, for host functions
  size_t max_stack = 0;
  uint64_t calls = 0;

  // Thread bookkeeping, see `Entry`. `home` is meaningful when `has_home`; `limit_thread` is
  // the thread the isolate's stack limit and thread id were last set for.
  std::mutex mutex;
  bool has_home = false;
  pthread_t home{};
  pthread_t limit_thread{};
  // A handle scope that stays open while the instance is entered on its home thread, holding
  // one handle block: the scope of each call nests in it instead of allocating and freeing a
  // block every time.
  std::optional<v8::HandleScope> bottom;

  ~Instance() {
    // Not entered by any thread: an entered instance is owned by that thread's slot.
    funcs.clear();
    buffer.Reset();
    memory.Reset();
    exports.Reset();
    context.Reset();
    if (isolate != nullptr) isolate->Dispose();
  }

  void EnterContext() {
    v8::HandleScope hs(isolate);
    context.Get(isolate)->Enter();
  }

  void ExitContext() {
    v8::HandleScope hs(isolate);
    context.Get(isolate)->Exit();
  }

  // Makes the isolate current for this thread and sets its stack limit for this thread;
  // `home` when it stays entered after the operation.
  void EnterHere(bool home) {
    isolate->Enter();
    EnterContext();
    SetStackLimit(isolate, max_stack);
    limit_thread = pthread_self();
    if (home) {
      bottom.emplace(isolate);
      context.Get(isolate);  // the first handle allocates the scope's block
    }
  }

  void ExitHere(bool home) {
    if (home) bottom.reset();
    ExitContext();
    isolate->Exit();
  }
};

using Handle = std::shared_ptr<Instance>;

// Per-thread bookkeeping. V8 wants an isolate entered (Isolate::Scope) by the thread using it;
// entering costs a mutex and an allocation, more than half a wasm call. So an instance stays
// entered on the thread that used it last (`lazy`), and a call from that thread finds it
// entered already. Only one instance per thread is kept that way; using another one first
// exits the previous one (at depth 0, when no bridge operation is running on the thread).
//
// An instance can move to another thread (WasmInstance: Send). That thread cannot exit it for
// the old one (V8 keeps per-thread state), so it enters and exits around each operation
// ("temporary" mode) while holding the instance's mutex, until the old thread lets go: at its
// next bridge operation with another instance, or when it exits. The old thread's slot keeps
// the instance alive until then, so an instance dropped elsewhere is disposed there.

// The most operations that may be nested on one thread with instances entered temporarily.
constexpr size_t kMaxNested = 32;

// Trivially destructible, so it stays usable until the thread's very end (Rust thread-locals
// that drop an instance may run after C++ ones); `ThreadGuard` does the cleanup.
struct ThreadSlot {
  Handle* lazy;                   // the instance kept entered on this thread (an owning copy)
  Instance* temps[kMaxNested];    // instances entered temporarily, innermost last
  size_t n_temps;
  int depth;                      // bridge operations running on this thread
  bool guarded;                   // `t_guard` is registered
  bool finished;                  // the thread is exiting: nothing stays entered any more
};

thread_local ThreadSlot t_slot = {};

// Exits the instance kept entered on this thread (only when no operation runs on it).
void Release() noexcept {
  Handle* handle = t_slot.lazy;
  t_slot.lazy = nullptr;
  if (handle == nullptr) return;
  Instance* in = handle->get();
  {
    std::lock_guard<std::mutex> guard(in->mutex);
    in->ExitHere(true);
    in->has_home = false;
  }
  // Dropping this owner may dispose the isolate, now that no thread has it entered.
  delete handle;
}

struct ThreadGuard {
  ~ThreadGuard() {
    Release();
    t_slot.finished = true;
  }
};

thread_local ThreadGuard t_guard;

// Makes an instance's isolate and context current for one bridge operation.
class Entry {
 public:
  Entry() = default;
  Entry(const Entry&) = delete;
  Entry& operator=(const Entry&) = delete;

  ~Entry() {
    if (temp_ != nullptr) {
      temp_->ExitHere(false);
      t_slot.n_temps--;
      lock_.unlock();
    }
    if (counted_) t_slot.depth--;
  }

  bool Enter(const Handle& handle) {
    ThreadSlot& slot = t_slot;
    slot.depth++;
    counted_ = true;
    Instance* in = handle.get();
    pthread_t self = pthread_self();
    // Fast path: entered on this thread, and nobody used it on another thread since.
    if (slot.lazy != nullptr && slot.lazy->get() == in && pthread_equal(in->limit_thread, self)) {
      return true;
    }
    // Nested inside an operation that entered it temporarily.
    if (std::find(slot.temps, slot.temps + slot.n_temps, in) != slot.temps + slot.n_temps) {
      return true;
    }
    if (slot.depth == 1 && !slot.finished) {
      if (slot.lazy != nullptr && slot.lazy->get() != in) Release();
      if (!slot.guarded) {
        ThreadGuard* guard = &t_guard;  // registers its destructor for this thread
        static_cast<void>(guard);
        slot.guarded = true;
      }
      std::lock_guard<std::mutex> guard(in->mutex);
      if (!in->has_home) {
        slot.lazy = new Handle(handle);
        in->EnterHere(true);
        in->has_home = true;
        in->home = self;
        return true;
      }
      if (pthread_equal(in->home, self)) {
        // Entered here, but another thread used it meanwhile: re-enter so that V8's notion of
        // the current thread and the stack limit are this thread's again.
        in->ExitHere(true);
        in->EnterHere(true);
        return true;
      }
    }
    // Entered on another thread, nested inside another instance's operation, or the thread
    // is exiting.
    if (slot.n_temps == kMaxNested) return false;
    lock_ = std::unique_lock<std::mutex>(in->mutex);
    in->EnterHere(false);
    slot.temps[slot.n_temps++] = in;
    temp_ = in;
    return true;
  }

 private:
  bool counted_ = false;
  Instance* temp_ = nullptr;
  std::unique_lock<std::mutex> lock_;
};

// A host function called by the guest.
void HostCallback(const v8::FunctionCallbackInfo<v8::Value>& info) noexcept {
  v8::Isolate* isolate = info.GetIsolate();
  Instance* in = static_cast<Instance*>(isolate->GetData(kInstanceSlot));
  uint32_t slot = info.Data().As<v8::Uint32>()->Value();
  if (in == nullptr || slot >= in->imports.size() || g_host == nullptr) {
    isolate->ThrowException(v8::Null(isolate));
    return;
  }
  const Import& im = in->imports[slot];
  uint64_t args[kMaxValues];
  uint32_t n = static_cast<uint32_t>(std::min(im.params.size(), kMaxValues));
  for (uint32_t i = 0; i < n; i++) args[i] = FromJs(info[static_cast<int>(i)], im.params[i]);
  uint64_t ret = 0;
  if (g_host(in->state, im.host_func, args, n, &ret) != 0) {
    // The Rust side keeps the error; unwind the guest. A termination unwinds by itself.
    if (!isolate->IsExecutionTerminating()) isolate->ThrowException(v8::Null(isolate));
    return;
  }
  if (im.results.empty()) return;
  switch (im.results[0]) {
    case kI32:
      info.GetReturnValue().Set(static_cast<int32_t>(static_cast<uint32_t>(ret)));
      break;
    default:
      info.GetReturnValue().Set(ToJs(isolate, im.results[0], ret));
  }
}

// The growth hook: the guest ran `memory.grow` (arguments: requested pages, the result, the
// size in pages now).
void GrowCallback(const v8::FunctionCallbackInfo<v8::Value>& info) noexcept {
  v8::Isolate* isolate = info.GetIsolate();
  Instance* in = static_cast<Instance*>(isolate->GetData(kInstanceSlot));
  if (in == nullptr || g_host == nullptr || info.Length() < 3) return;
  uint64_t args[3] = {FromJs(info[0], kI32), FromJs(info[1], kI32), FromJs(info[2], kI32)};
  uint64_t ret = 0;
  g_host(in->state, kGrowNote, args, 3, &ret);
}

// Reads the current buffer of the exported memory into `base`/`length` if it changed.
void RefreshMemory(Instance* in) {
  v8::Isolate* isolate = in->isolate;
  if (in->memory.IsEmpty()) return;
  v8::HandleScope hs(isolate);
  v8::Local<v8::ArrayBuffer> buffer = in->memory.Get(isolate)->Buffer();
  if (in->buffer == buffer) return;
  std::shared_ptr<v8::BackingStore> store = buffer->GetBackingStore();
  in->base = static_cast<uint8_t*>(store->Data());
  in->length = store->ByteLength();
  in->buffer.Reset(isolate, buffer);
}

struct Compiler {
  std::mutex mutex;
  v8::Isolate* isolate = nullptr;
  v8::Global<v8::Context> context;
};

// `max_heap`: the JS heap limit. It holds wrappers (functions, the instance, errors) and the
// wasm tables; the caller sizes it for the tables its limits allow.
v8::Isolate* NewIsolate(size_t max_heap) {
  v8::Isolate::CreateParams params;
  params.array_buffer_allocator = g_allocator;
  params.constraints.ConfigureDefaultsFromHeapSize(0, max_heap);
  v8::Isolate* isolate = v8::Isolate::New(params);
  isolate->SetMicrotasksPolicy(v8::MicrotasksPolicy::kExplicit);
  isolate->SetCaptureStackTraceForUncaughtExceptions(true, 32, v8::StackTrace::kFunctionName);
  return isolate;
}

}  // namespace

// -------------------------------------------------------------------------------------------------
// The C ABI.

extern "C" {

int32_t wasmux_v8_init(wx_host_fn host) noexcept {
  try {
    std::call_once(g_init_once, [host] {
      g_host = host;
      // With dynamic tiering (the default in V8 10.2), Liftoff code checks for interrupts
      // at loop back-edges only when the function's tiering budget runs out, which takes a
      // budget of about 1.8 million bytes of executed loop code: a loop whose iterations are
      // cheap in wasm but slow elsewhere (host calls, bulk memory operations) ignored
      // TerminateExecution for seconds or minutes. Without it, Liftoff puts a stack check,
      // which handles interrupts, in every loop header (as TurboFan code always does), and
      // V8 tiers every function up to TurboFan in the background after compiling it.
      v8::V8::SetFlagsFromString("--no-wasm-dynamic-tiering");
      // No WebAssembly trap handler (V8::EnableWebAssemblyTrapHandler): V8 then emits explicit
      // bounds checks instead of installing a SIGSEGV handler that would fight the ones of
      // other engines in the same process.
      g_platform = v8::platform::NewDefaultPlatform().release();
      v8::V8::InitializePlatform(g_platform);
      v8::V8::Initialize();
      g_allocator = v8::ArrayBuffer::Allocator::NewDefaultAllocator();
    });
    return g_allocator != nullptr ? kOk : kFailed;
  } catch (...) {
    return kFailed;
  }
}

const char* wasmux_v8_version() noexcept { return v8::V8::GetVersion(); }

Compiler* wasmux_v8_compiler_new() noexcept {
  try {
    auto compiler = std::make_unique<Compiler>();
    compiler->isolate = NewIsolate(64 * 1024 * 1024);
    {
      v8::Isolate::Scope is(compiler->isolate);
      v8::HandleScope hs(compiler->isolate);
      compiler->context.Reset(compiler->isolate, v8::Context::New(compiler->isolate));
    }
    return compiler.release();
  } catch (...) {
    return nullptr;
  }
}

void wasmux_v8_compiler_free(Compiler* compiler) noexcept {
  if (compiler == nullptr) return;
  compiler->context.Reset();
  compiler->isolate->Dispose();
  delete compiler;
}

int32_t wasmux_v8_compile(Compiler* compiler, const uint8_t* bytes, size_t len,
                          v8::CompiledWasmModule** out, void* sink_ctx,
                          wx_sink_fn sink_fn) noexcept {
  try {
    Sink sink{sink_ctx, sink_fn};
    std::lock_guard<std::mutex> guard(compiler->mutex);
    v8::Isolate* isolate = compiler->isolate;
    v8::Isolate::Scope is(isolate);
    SetStackLimit(isolate, kCompileStack);
    v8::HandleScope hs(isolate);
    v8::Local<v8::Context> context = compiler->context.Get(isolate);
    v8::Context::Scope cs(context);
    v8::TryCatch tc(isolate);
    v8::Local<v8::WasmModuleObject> module;
    if (!v8::WasmModuleObject::Compile(isolate, v8::MemorySpan<const uint8_t>(bytes, len))
             .ToLocal(&module)) {
      return Failure(isolate, context, tc, sink);
    }
    *out = new v8::CompiledWasmModule(module->GetCompiledModule());
    return kOk;
  } catch (...) {
    return kFailed;
  }
}

void wasmux_v8_module_free(v8::CompiledWasmModule* module) noexcept { delete module; }

// Creates an instance's isolate and context; `wasmux_v8_instance_link` instantiates.
int32_t wasmux_v8_instance_new(void* state, size_t max_stack, size_t max_heap, Handle** out,
                               v8::Isolate** isolate_out) noexcept {
  try {
    auto in = std::make_shared<Instance>();
    in->state = state;
    in->max_stack = max_stack;
    in->isolate = NewIsolate(max_heap);
    in->isolate->SetData(kInstanceSlot, in.get());
    {
      v8::Isolate::Scope is(in->isolate);
      v8::HandleScope hs(in->isolate);
      in->context.Reset(in->isolate, v8::Context::New(in->isolate));
    }
    *isolate_out = in->isolate;
    *out = new Handle(std::move(in));
    return kOk;
  } catch (...) {
    return kFailed;
  }
}

void wasmux_v8_instance_free(Handle* handle) noexcept {
  if (handle == nullptr) return;
  if (t_slot.depth == 0 && t_slot.lazy != nullptr && t_slot.lazy->get() == handle->get()) {
    Release();
  }
  delete handle;
}

int32_t wasmux_v8_instance_link(Handle* handle, const v8::CompiledWasmModule* module,
                                const wx_import* imports, size_t n_imports,
                                const uint8_t* mem_module, size_t mem_module_len,
                                const uint8_t* mem_name, size_t mem_name_len, wx_memory memory,
                                wx_hooks hooks, void* sink_ctx, wx_sink_fn sink_fn) noexcept {
  try {
    Sink sink{sink_ctx, sink_fn};
    Entry entry;
    if (!entry.Enter(*handle)) return kFailed;
    Instance* in = handle->get();
    v8::Isolate* isolate = in->isolate;
    v8::HandleScope hs(isolate);
    v8::Local<v8::Context> context = in->context.Get(isolate);
    v8::TryCatch tc(isolate);

    v8::Local<v8::WasmModuleObject> module_object;
    if (!v8::WasmModuleObject::FromCompiledModule(isolate, *module).ToLocal(&module_object)) {
      return Failure(isolate, context, tc, sink);
    }
    v8::Local<v8::Object> wasm;
    {
      v8::Local<v8::Value> v;
      if (!context->Global()->Get(context, Str(isolate, "WebAssembly")).ToLocal(&v) ||
          !v->IsObject()) {
        return kFailed;
      }
      wasm = v.As<v8::Object>();
    }
    auto constructor = [&](const char* name, v8::Local<v8::Function>* out) {
      v8::Local<v8::Value> v;
      if (!wasm->Get(context, Str(isolate, name)).ToLocal(&v) || !v->IsFunction()) return false;
      *out = v.As<v8::Function>();
      return true;
    };

    // The import object: one function per import, each calling back into Rust.
    v8::Local<v8::Object> import_object = v8::Object::New(isolate);
    auto namespace_of = [&](v8::Local<v8::String> name, v8::Local<v8::Object>* out) {
      v8::Local<v8::Value> v;
      if (!import_object->Get(context, name).ToLocal(&v)) return false;
      if (v->IsObject()) {
        *out = v.As<v8::Object>();
        return true;
      }
      *out = v8::Object::New(isolate);
      return import_object->Set(context, name, *out).FromMaybe(false);
    };
    in->imports.clear();
    in->imports.reserve(n_imports);
    for (size_t i = 0; i < n_imports; i++) {
      const wx_import& spec = imports[i];
      if (spec.n_params > kMaxValues || spec.n_results > 1) return kFailed;
      in->imports.push_back(Import{spec.host_func,
                                   std::vector<uint8_t>(spec.params, spec.params + spec.n_params),
                                   std::vector<uint8_t>(spec.results, spec.results + spec.n_results)});
      v8::Local<v8::FunctionTemplate> tmpl = v8::FunctionTemplate::New(
          isolate, HostCallback, v8::Integer::NewFromUnsigned(isolate, static_cast<uint32_t>(i)),
          v8::Local<v8::Signature>(), static_cast<int>(spec.n_params),
          v8::ConstructorBehavior::kThrow);
      v8::Local<v8::Function> fn;
      v8::Local<v8::Object> ns;
      if (!tmpl->GetFunction(context).ToLocal(&fn) ||
          !namespace_of(Str(isolate, spec.module, spec.module_len), &ns) ||
          !ns->Set(context, Str(isolate, spec.name, spec.name_len), fn).FromMaybe(false)) {
        return Failure(isolate, context, tc, sink);
      }
    }

    // The module's own memory, provided from outside with the instance's limit as maximum.
    if (memory.present != 0) {
      v8::Local<v8::Function> memory_ctor;
      if (!constructor("Memory", &memory_ctor)) return kFailed;
      v8::Local<v8::Object> descriptor = v8::Object::New(isolate);
      v8::Local<v8::Object> ns;
      v8::Local<v8::Value> args[1] = {descriptor};
      v8::Local<v8::Object> mem;
      if (!descriptor
               ->Set(context, Str(isolate, "initial"),
                     v8::Integer::NewFromUnsigned(isolate, memory.initial))
               .FromMaybe(false) ||
          !descriptor
               ->Set(context, Str(isolate, "maximum"),
                     v8::Integer::NewFromUnsigned(isolate, memory.maximum))
               .FromMaybe(false) ||
          !memory_ctor->NewInstance(context, 1, args).ToLocal(&mem) ||
          !namespace_of(Str(isolate, mem_module, mem_module_len), &ns) ||
          !ns->Set(context, Str(isolate, mem_name, mem_name_len), mem).FromMaybe(false)) {
        return Failure(isolate, context, tc, sink);
      }
    }

    v8::Local<v8::Function> instance_ctor;
    if (!constructor("Instance", &instance_ctor)) return kFailed;
    v8::Local<v8::Value> args[2] = {module_object, import_object};
    v8::Local<v8::Object> instance;
    if (!instance_ctor->NewInstance(context, 2, args).ToLocal(&instance)) {
      return Failure(isolate, context, tc, sink);
    }
    v8::Local<v8::Value> exports;
    if (!instance->Get(context, Str(isolate, "exports")).ToLocal(&exports) ||
        !exports->IsObject()) {
      return Failure(isolate, context, tc, sink);
    }
    in->exports.Reset(isolate, exports.As<v8::Object>());

    // The growth hook: wrap the callback as a wasm function and store it in the hook table.
    if (hooks.grow_table_len > 0) {
      v8::Local<v8::WasmModuleObject> wrapper;
      v8::Local<v8::Function> callback;
      v8::Local<v8::Object> wrapper_imports = v8::Object::New(isolate);
      v8::Local<v8::Object> ns = v8::Object::New(isolate);
      v8::Local<v8::Object> wrapper_instance;
      v8::Local<v8::Value> wrapper_exports, wrapped, table, set;
      if (!v8::WasmModuleObject::Compile(
               isolate, v8::MemorySpan<const uint8_t>(kHookWrapper, sizeof kHookWrapper))
               .ToLocal(&wrapper) ||
          !v8::FunctionTemplate::New(isolate, GrowCallback, v8::Local<v8::Value>(),
                                     v8::Local<v8::Signature>(), 3, v8::ConstructorBehavior::kThrow)
               ->GetFunction(context)
               .ToLocal(&callback) ||
          !ns->Set(context, Str(isolate, "n"), callback).FromMaybe(false) ||
          !wrapper_imports->Set(context, Str(isolate, "h"), ns).FromMaybe(false)) {
        return Failure(isolate, context, tc, sink);
      }
      v8::Local<v8::Value> wrapper_args[2] = {wrapper, wrapper_imports};
      if (!instance_ctor->NewInstance(context, 2, wrapper_args).ToLocal(&wrapper_instance) ||
          !wrapper_instance->Get(context, Str(isolate, "exports")).ToLocal(&wrapper_exports) ||
          !wrapper_exports->IsObject() ||
          !wrapper_exports.As<v8::Object>()->Get(context, Str(isolate, "n")).ToLocal(&wrapped) ||
          !exports.As<v8::Object>()
               ->Get(context, Str(isolate, hooks.grow_table, hooks.grow_table_len))
               .ToLocal(&table) ||
          !table->IsObject() ||
          !table.As<v8::Object>()->Get(context, Str(isolate, "set")).ToLocal(&set) ||
          !set->IsFunction()) {
        return Failure(isolate, context, tc, sink);
      }
      v8::Local<v8::Value> set_args[2] = {v8::Integer::New(isolate, 0), wrapped};
      if (set.As<v8::Function>()->Call(context, table, 2, set_args).IsEmpty()) {
        return Failure(isolate, context, tc, sink);
      }
    }
    // The table budget: the global starts at 0 (no growth) until set here.
    if (hooks.table_limit_len > 0) {
      v8::Local<v8::Value> global;
      // A WebAssembly.Global's `value` setter converts the number (ToInt32 keeps the low 32
      // bits, which the wasm side reads as unsigned); no JS of anyone else's runs.
      if (!exports.As<v8::Object>()
               ->Get(context, Str(isolate, hooks.table_limit, hooks.table_limit_len))
               .ToLocal(&global) ||
          !global->IsObject() ||
          !global.As<v8::Object>()
               ->Set(context, Str(isolate, "value"),
                     v8::Number::New(isolate, static_cast<double>(hooks.table_limit_value)))
               .FromMaybe(false)) {
        return Failure(isolate, context, tc, sink);
      }
    }
    v8::Local<v8::Value> mem;
    if (exports.As<v8::Object>()->Get(context, Str(isolate, "memory")).ToLocal(&mem) &&
        mem->IsWasmMemoryObject()) {
      in->memory.Reset(isolate, mem.As<v8::WasmMemoryObject>());
    }
    // The start function, deferred by the rewrite until the hooks above are in place.
    if (hooks.start_len > 0) {
      v8::Local<v8::Value> start;
      if (!exports.As<v8::Object>()
               ->Get(context, Str(isolate, hooks.start, hooks.start_len))
               .ToLocal(&start) ||
          !start->IsFunction()) {
        return Failure(isolate, context, tc, sink);
      }
      if (start.As<v8::Function>()->Call(context, v8::Undefined(isolate), 0, nullptr).IsEmpty()) {
        return Failure(isolate, context, tc, sink);
      }
    }
    return kOk;
  } catch (...) {
    return kFailed;
  }
}

// Resolves an exported function into `slot` of the instance's table, which has one slot per
// function export of the module (`n_slots`, the same for every instance); returns the slot or
// -1.
int32_t wasmux_v8_lookup(Handle* handle, uint32_t slot, uint32_t n_slots, const uint8_t* name,
                         size_t name_len, const uint8_t* params, size_t n_params,
                         const uint8_t* results, size_t n_results) noexcept {
  try {
    Entry entry;
    if (!entry.Enter(*handle)) return -1;
    Instance* in = handle->get();
    if (in->exports.IsEmpty() || n_params > kMaxValues || slot >= n_slots) return -1;
    v8::Isolate* isolate = in->isolate;
    v8::HandleScope hs(isolate);
    v8::Local<v8::Context> context = in->context.Get(isolate);
    v8::TryCatch tc(isolate);
    v8::Local<v8::Value> v;
    if (!in->exports.Get(isolate)->Get(context, Str(isolate, name, name_len)).ToLocal(&v) ||
        !v->IsFunction()) {
      return -1;
    }
    // Sized once to the module's table (no call is running during a lookup).
    if (in->funcs.size() < n_slots) in->funcs.resize(n_slots);
    Export& ex = in->funcs[slot];
    ex.fn.Reset(isolate, v.As<v8::Function>());
    std::copy(params, params + n_params, ex.params);
    ex.n_params = static_cast<uint32_t>(n_params);
    ex.result = n_results > 0 ? results[0] : 0;
    ex.n_results = static_cast<uint32_t>(n_results);
    return static_cast<int32_t>(slot);
  } catch (...) {
    return -1;
  }
}

// Calls a resolved export, from the embedder or re-entrantly from a host function.
int32_t wasmux_v8_call(Handle* handle, uint32_t index, const uint64_t* args, uint32_t nargs,
                       uint64_t* result, void* sink_ctx, wx_sink_fn sink_fn) noexcept {
  try {
    Entry entry;
    if (!entry.Enter(*handle)) return kFailed;
    Instance* in = handle->get();
    if (index >= in->funcs.size()) return kFailed;
    const Export& ex = in->funcs[index];
    if (ex.fn.IsEmpty() || nargs != ex.n_params || nargs > kMaxValues) return kFailed;
    v8::Isolate* isolate = in->isolate;
    v8::HandleScope hs(isolate);
    v8::Local<v8::Context> context = in->context.Get(isolate);
    // Left uninitialized past `nargs` (zeroing all of it showed in profiles).
    alignas(v8::Local<v8::Value>) unsigned char storage[sizeof(v8::Local<v8::Value>) * kMaxValues];
    v8::Local<v8::Value>* argv = reinterpret_cast<v8::Local<v8::Value>*>(storage);
    for (uint32_t i = 0; i < nargs; i++) {
      ::new (&argv[i]) v8::Local<v8::Value>(ToJs(isolate, ex.params[i], args[i]));
    }
    v8::TryCatch tc(isolate);
    v8::Local<v8::Value> ret;
    if (!ex.fn.Get(isolate)->Call(context, v8::Undefined(isolate), static_cast<int>(nargs), argv)
             .ToLocal(&ret)) {
      return Failure(isolate, context, tc, Sink{sink_ctx, sink_fn});
    }
    if (ex.n_results > 0) {
      if (ex.n_results > 1) {
        // Multi-value: an array; the first value is the one reported.
        v8::Local<v8::Value> first;
        if (!ret->IsArray() || !ret.As<v8::Array>()->Get(context, 0).ToLocal(&first)) {
          return kFailed;
        }
        ret = first;
      }
      *result = FromJs(ret, ex.result);
    }
    // Foreground tasks V8 posts (GC, compilation) run on the embedder's thread: drain them now
    // and then, at the outermost level.
    if (t_slot.depth == 1 && (++in->calls & 1023) == 0) {
      while (v8::platform::PumpMessageLoop(g_platform, isolate)) {
      }
    }
    return kOk;
  } catch (...) {
    return kFailed;
  }
}

// The exported memory's current base and length (null and 0 without one). The base moves when
// memory grows; callers read it again after any guest code ran.
int32_t wasmux_v8_memory(Handle* handle, uint8_t** base, size_t* length) noexcept {
  try {
    Entry entry;
    if (!entry.Enter(*handle)) return kFailed;
    Instance* in = handle->get();
    RefreshMemory(in);
    *base = in->base;
    *length = in->length;
    return kOk;
  } catch (...) {
    return kFailed;
  }
}

// Reads exported global `name` (a WebAssembly.Global) as raw bits of type `ty` (kI32 ...
// kF64), converted as function results are (FromJs); a value of another JS type fails.
int32_t wasmux_v8_global(Handle* handle, const uint8_t* name, size_t name_len, uint8_t ty,
                         uint64_t* out) noexcept {
  try {
    Entry entry;
    if (!entry.Enter(*handle)) return kFailed;
    Instance* in = handle->get();
    if (in->exports.IsEmpty() || ty > kF64) return kFailed;
    v8::Isolate* isolate = in->isolate;
    v8::HandleScope hs(isolate);
    v8::Local<v8::Context> context = in->context.Get(isolate);
    v8::TryCatch tc(isolate);
    v8::Local<v8::Value> global, value;
    if (!in->exports.Get(isolate)->Get(context, Str(isolate, name, name_len)).ToLocal(&global) ||
        !global->IsObject() ||
        !global.As<v8::Object>()->Get(context, Str(isolate, "value")).ToLocal(&value) ||
        !(ty == kI64 ? value->IsBigInt() : value->IsNumber())) {
      return kFailed;
    }
    *out = FromJs(value, ty);
    return kOk;
  } catch (...) {
    return kFailed;
  }
}

// Thread-safe (V8 documents both for use from any thread).
void wasmux_v8_terminate(v8::Isolate* isolate) noexcept { isolate->TerminateExecution(); }

void wasmux_v8_cancel_terminate(v8::Isolate* isolate) noexcept {
  isolate->CancelTerminateExecution();
}

}  // extern "C"
