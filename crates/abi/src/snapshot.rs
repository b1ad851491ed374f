//! Pre-initialized snapshots: start a VM once, then start every further instance from its
//! memory and globals instead of running the start-up code again.
//!
//! A started proxy-wasm VM is its linear memory, its mutable globals and the host-side state
//! of its root contexts. The module's start-up code (`_initialize`, `main`, `_start`, the
//! start function) and the plugin's start (`proxy_on_context_create`, `proxy_on_vm_start`,
//! `proxy_on_configure`) only ever change those. So the host runs them once, on a *template*
//! instance, and writes what they left into a new module ([`Template::rewrite`]):
//!
//! - the data section becomes the template's memory (its non-zero runs as active segments),
//!   and the memory's minimum size the template's size;
//! - each mutable global starts at the template's value;
//! - the start section and the start-up exports are gone.
//!
//! Instances of that module start where the template stopped: an engine that maps data
//! segments copy-on-write (wasmtime) creates one by mapping a shared image, with no guest code
//! run. Nothing about it is engine-specific: the template's globals are read through exports
//! the host adds to the module it runs the template on ([`Template::instrumented`]), and its
//! memory through [`WasmInstance::read`].
//!
//! # When a snapshot would change behaviour
//!
//! A snapshot is only taken when every instance started from it is indistinguishable from one
//! that ran the start itself. The module must not hold state a snapshot cannot carry
//! ([`Template::parse`] refuses it, with the reason):
//!
//! - memories, tables or globals it imports (proxy-wasm modules import functions only);
//! - table contents its code can change (`table.set`, `table.grow`, `table.fill`,
//!   `table.copy`, `table.init`, `elem.drop`) or passive data segments (`memory.init`,
//!   `data.drop`): the rewrite carries memory and globals, not tables or dropped segments;
//! - mutable globals of reference or vector type, shared or 64-bit memories, custom page
//!   sizes.
//!
//! And the start must only have called host functions whose effect the snapshot keeps or
//! replays ([`verdict`], which sorts every host function into a [`HostCallClass`]):
//!
//! - **pure**: answers that are the same for every instance of the plugin (its
//!   configuration buffers, the log level, properties, environment variables, the sandbox's
//!   fixed WASI answers), and defining a metric (a store gives the same name the same id);
//! - **replayed**: log lines (`proxy_log`, stdout and stderr), which every instance started
//!   from the snapshot emits again, in order, attributed to the same contexts;
//! - **kept**: tick periods and root-context properties, which live in the root contexts'
//!   host state and are copied to every instance (the tick period is registered again with
//!   the embedder's timers, for the new instance);
//! - **frozen**: clocks and random numbers. A snapshot would give every instance the values
//!   the template read: the same random seed in every worker. Only
//!   [`SnapshotPolicy::FreezeClockAndRandom`] accepts that, for language runtimes (Go's)
//!   whose start-up always reads both;
//! - **effects** on state outside the VM (shared data, queues, callouts, metric values,
//!   foreign functions, `proxy_done`, ...): never snapshotted.
//!
//! The template runs against isolated services ([`TemplateServices`]): its shared data,
//! queues, timers and callouts are its own, its log lines are recorded rather than emitted,
//! and only metric definitions reach the embedder's store. So a template whose start turns out
//! not to be snapshottable has had no effect outside itself, and the host falls back to
//! starting every instance normally.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use wasm_encoder::{
    ConstExpr, DataSection, ExportKind, ExportSection, GlobalSection, MemorySection, RawSection, SectionId,
};
use wasmparser::{ExternalKind, Operator, Parser, Payload, TypeRef};

use crate::services::{
    ForeignFunctions, InMemoryMetrics, InMemoryQueues, InMemorySharedData, LogLine, LogSink, ManualTimers,
    MetricSnapshot, Metrics, RecordingCallouts,
};
use crate::state::{Context, ContextKind, ContextMap, Lifecycle};
use crate::{HOST_FUNCS, HostState, LogLevel, MetricType, Quotas, Refused, Services, Status, ValType, WasmInstance};

/// Whether a plugin's instances start from a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum SnapshotPolicy {
    /// Every instance runs the module's start-up code and the plugin's start.
    #[default]
    Off,
    /// Start instances from a snapshot when the start only made host calls a snapshot keeps
    /// (see the [module docs](self)); otherwise start them normally.
    WhenSafe,
    /// As [`Self::WhenSafe`], and also when the start read clocks or random numbers: every
    /// instance then starts with the values the template read (the same random state in every
    /// worker). For runtimes such as Go's, whose start-up always reads both.
    FreezeClockAndRandom,
}

impl SnapshotPolicy {
    /// Every policy.
    pub const ALL: [Self; 3] = [Self::Off, Self::WhenSafe, Self::FreezeClockAndRandom];

    /// The policy's name in configuration files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::WhenSafe => "when_safe",
            Self::FreezeClockAndRandom => "freeze_clock_and_random",
        }
    }
}

impl fmt::Display for SnapshotPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SnapshotPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|p| p.name()).collect();
            format!("`{s}` is not a snapshot policy (one of {})", names.join(", "))
        })
    }
}

/// How a host function called during the start affects a snapshot (see the [module
/// docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostCallClass {
    /// The same answer for every instance of the plugin.
    Pure,
    /// An output the snapshot records and every instance replays (log lines).
    Replayed,
    /// State kept in the root contexts, which the snapshot copies.
    Kept,
    /// Reads a clock or random numbers: frozen into the snapshot.
    Frozen,
    /// An effect outside the VM: no snapshot.
    Effect,
}

/// The class of each host function, by name. A WASI function not listed is
/// [`HostCallClass::Pure`] (the sandbox has no files, sockets or processes: each answers the
/// environment the plugin was given, or a fixed errno, and changes nothing), but `proc_exit`;
/// anything else not listed is an [`HostCallClass::Effect`].
const CLASSES: &[(&str, HostCallClass)] = {
    use HostCallClass::{Effect, Frozen, Kept, Pure, Replayed};
    &[
        ("proxy_log", Replayed),
        ("fd_write", Replayed),
        ("fd_pwrite", Replayed),
        ("proxy_get_log_level", Pure),
        ("proxy_set_effective_context", Pure),
        ("proxy_get_configuration", Pure),
        ("proxy_get_buffer_bytes", Pure),
        ("proxy_get_buffer_status", Pure),
        ("proxy_get_header_map_pairs", Pure),
        ("proxy_get_header_map_size", Pure),
        ("proxy_get_header_map_value", Pure),
        ("proxy_get_status", Pure),
        ("proxy_get_property", Pure),
        ("proxy_define_metric", Pure),
        ("emscripten_notify_memory_growth", Pure),
        ("pthread_equal", Pure),
        ("proxy_set_tick_period_milliseconds", Kept),
        ("proxy_set_property", Kept),
        ("proc_exit", Effect),
        ("proxy_get_current_time_nanoseconds", Frozen),
        ("clock_time_get", Frozen),
        ("random_get", Frozen),
        ("poll_oneoff", Frozen),
    ]
};

/// The class of host function `name`.
pub fn host_call_class(name: &str) -> HostCallClass {
    if let Some(&(_, class)) = CLASSES.iter().find(|(n, _)| *n == name) {
        return class;
    }
    let wasi = HOST_FUNCS.iter().any(|f| f.name == name && f.module == crate::ImportModule::Wasi);
    if wasi { HostCallClass::Pure } else { HostCallClass::Effect }
}

/// Whether a start that called the host functions named in `called` (as
/// [`HostState::coverage`] lists them) may be snapshotted under `policy`.
///
/// # Errors
/// Why not, naming the host functions at fault.
pub fn verdict<'a>(called: impl IntoIterator<Item = &'a str>, policy: SnapshotPolicy) -> Result<(), String> {
    if policy == SnapshotPolicy::Off {
        return Err("snapshots are off".into());
    }
    let (mut effects, mut frozen) = (Vec::new(), Vec::new());
    for name in called {
        match host_call_class(name) {
            HostCallClass::Effect => effects.push(name),
            HostCallClass::Frozen if policy != SnapshotPolicy::FreezeClockAndRandom => frozen.push(name),
            _ => {}
        }
    }
    if !effects.is_empty() {
        return Err(format!("the start called host functions with effects outside the VM: {}", effects.join(", ")));
    }
    if !frozen.is_empty() {
        return Err(format!(
            "the start read clocks or random numbers ({}), which a snapshot would freeze for every instance \
             (policy freeze_clock_and_random allows it)",
            frozen.join(", ")
        ));
    }
    Ok(())
}

/// The export name under which [`Template::instrumented`] exposes defined global `index`. A
/// module that already exports a name of this form is not snapshotted.
fn global_export(index: u32) -> String {
    format!("__wasmux_snapshot_global_{index}")
}

const GLOBAL_EXPORT_PREFIX: &str = "__wasmux_snapshot_global_";

/// Function exports the host runs at start-up; a snapshot has run them.
const START_UP_EXPORTS: [&str; 4] = ["_initialize", "_start", "main", "__main_void"];

/// Wasm page size.
const PAGE: u64 = 65_536;

/// Zero runs at least this long split the memory image into separate data segments.
const SEGMENT_GAP: usize = 1024;

/// Most data segments a snapshot writes (wasmparser's implementation limit is 100 000): past
/// it, the gap that splits segments doubles.
const MAX_SEGMENTS: usize = 50_000;

/// A section of the original module, in order.
#[derive(Debug, Clone)]
enum Section {
    /// Copied byte for byte: id and range of its contents in the original bytes.
    Raw(u8, Range<usize>),
    Memory,
    Global,
    Export,
    /// The start section: dropped from a snapshot.
    Start(Range<usize>),
    /// The data count section: the snapshot's segment count.
    DataCount(Range<usize>),
    /// The data section: the snapshot's memory image.
    Data(Range<usize>),
    /// The code section, copied; the data section follows it when the module had none.
    Code(Range<usize>),
}

/// A defined global: its type and, for immutable ones, its original initializer.
#[derive(Debug, Clone)]
struct GlobalDef {
    ty: wasm_encoder::ValType,
    mutable: bool,
    /// The initializer without its `end`.
    init: Vec<u8>,
}

/// What the host learned about a module it can snapshot, and the module to run the template
/// on.
pub struct Template {
    original: Box<[u8]>,
    sections: Vec<Section>,
    globals: Vec<GlobalDef>,
    memory: wasmparser::MemoryType,
    exports: Vec<(String, ExternalKind, u32)>,
    instrumented: Vec<u8>,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Template")
            .field("bytes", &self.original.len())
            .field("globals", &self.globals.len())
            .finish_non_exhaustive()
    }
}

/// A template's state after its start: memory and mutable globals.
#[derive(Clone, PartialEq, Eq)]
pub struct Image {
    memory: Vec<u8>,
    /// Raw bits of each mutable global, in definition order.
    globals: Vec<u64>,
}

impl fmt::Debug for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Image").field("memory", &self.memory.len()).field("globals", &self.globals).finish()
    }
}

impl Template {
    /// Reads a module the host has validated and prepares its template.
    ///
    /// # Errors
    /// Why the module cannot be snapshotted (see the [module docs](self)), or a parse error.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if !bytes.starts_with(b"\0asm") {
            return Err("it is not a wasm module (a native filter runs no wasm to snapshot)".into());
        }
        let err = |e: wasmparser::BinaryReaderError| format!("cannot read the module: {e}");
        let mut sections = Vec::new();
        let mut globals = Vec::new();
        let mut memory = None;
        let mut exports = None;
        for payload in Parser::new(0).parse_all(bytes) {
            let payload = payload.map_err(err)?;
            match &payload {
                Payload::ImportSection(imports) => {
                    for import in imports.clone().into_imports() {
                        let import = import.map_err(err)?;
                        if !matches!(import.ty, TypeRef::Func(_) | TypeRef::FuncExact(_)) {
                            return Err(format!(
                                "it imports `{}.{}`, which is not a function",
                                import.module, import.name
                            ));
                        }
                    }
                }
                Payload::MemorySection(memories) => {
                    for m in memories.clone() {
                        let m = m.map_err(err)?;
                        if memory.is_some() {
                            return Err("it defines more than one memory".into());
                        }
                        if m.memory64 || m.shared || m.page_size_log2.is_some() {
                            return Err("its memory is 64-bit, shared or has a custom page size".into());
                        }
                        memory = Some(m);
                    }
                    sections.push(Section::Memory);
                    continue;
                }
                Payload::GlobalSection(reader) => {
                    for g in reader.clone() {
                        let g = g.map_err(err)?;
                        globals.push(global_def(bytes, &g)?);
                    }
                    sections.push(Section::Global);
                    continue;
                }
                Payload::ExportSection(reader) => {
                    let mut list = Vec::new();
                    for e in reader.clone() {
                        let e = e.map_err(err)?;
                        if e.name.starts_with(GLOBAL_EXPORT_PREFIX) {
                            return Err(format!("it exports `{}`, a name the snapshot needs", e.name));
                        }
                        list.push((e.name.to_owned(), e.kind, e.index));
                    }
                    exports = Some(list);
                    sections.push(Section::Export);
                    continue;
                }
                Payload::StartSection { range, .. } => {
                    sections.push(Section::Start(range.clone()));
                    continue;
                }
                Payload::DataCountSection { range, .. } => {
                    sections.push(Section::DataCount(range.clone()));
                    continue;
                }
                Payload::DataSection(reader) => {
                    for d in reader.clone() {
                        if matches!(d.map_err(err)?.kind, wasmparser::DataKind::Passive) {
                            return Err("it has passive data segments".into());
                        }
                    }
                    sections.push(Section::Data(reader.range()));
                    continue;
                }
                Payload::CodeSectionStart { range, .. } => {
                    sections.push(Section::Code(range.clone()));
                    continue;
                }
                Payload::CodeSectionEntry(body) => {
                    let mut ops = body.get_operators_reader().map_err(err)?;
                    while !ops.eof() {
                        if let Some(op) = table_or_segment_op(&ops.read().map_err(err)?) {
                            return Err(format!("its code uses `{op}`, which changes state a snapshot does not carry"));
                        }
                    }
                    continue;
                }
                _ => {}
            }
            if let Some((id, range)) = payload.as_section() {
                sections.push(Section::Raw(id, range));
            }
        }
        let memory = memory.ok_or("it defines no memory")?;
        let exports = exports.ok_or("it has no exports")?;
        let mut template =
            Self { original: bytes.into(), sections, globals, memory, exports, instrumented: Vec::new() };
        template.instrumented = template.encode(None);
        Ok(template)
    }

    /// The module to run the template on: the original, with every mutable global also
    /// exported so that the host can read it. Its behaviour is the original's.
    pub fn instrumented(&self) -> &[u8] {
        &self.instrumented
    }

    /// Reads a started template's memory and mutable globals. `instance` must be an instance
    /// of [`Self::instrumented`].
    ///
    /// # Errors
    /// The engine cannot read a global, or memory is out of reach.
    pub fn capture(&self, instance: &mut dyn WasmInstance) -> Result<Image, String> {
        let size = instance.memory_size();
        let len = usize::try_from(size).map_err(|_| "the memory is too large to copy")?;
        let mut memory = vec![0; len];
        instance.read(0, &mut memory).map_err(|_| "the memory cannot be read")?;
        let mut globals = Vec::new();
        for (i, g) in self.globals.iter().enumerate() {
            if !g.mutable {
                continue;
            }
            let name = global_export(i as u32);
            let value = instance
                .global(&name, g.kind())
                .ok_or_else(|| format!("the {} engine cannot read global `{name}`", instance.engine()))?;
            globals.push(value);
        }
        Ok(Image { memory, globals })
    }

    /// The snapshot module: the original whose memory and globals start as `image` has them,
    /// without start function or start-up exports.
    pub fn rewrite(&self, image: &Image) -> Vec<u8> {
        self.encode(Some(image))
    }

    /// Encodes the instrumented module (`None`) or the snapshot of `image`.
    fn encode(&self, image: Option<&Image>) -> Vec<u8> {
        let bytes = &*self.original;
        let mut out = wasm_encoder::Module::new();
        let copy = |out: &mut wasm_encoder::Module, id: u8, range: &Range<usize>| {
            out.section(&RawSection { id, data: &bytes[range.clone()] });
        };
        // A snapshot's data section: the memory's non-zero runs, after the code section (where
        // the original's data section stands, or would).
        let snapshot_data = image.map(|i| (i, segments(&i.memory)));
        let has_data = self.sections.iter().any(|s| matches!(s, Section::Data(_)));
        for section in &self.sections {
            match section {
                Section::Raw(id, range) => copy(&mut out, *id, range),
                Section::Code(range) => {
                    copy(&mut out, SectionId::Code as u8, range);
                    if let Some((image, segs)) = &snapshot_data
                        && !has_data
                    {
                        out.section(&data_section(&image.memory, segs));
                    }
                }
                Section::Memory => {
                    let minimum = image.map_or(self.memory.initial, |i| i.memory.len() as u64 / PAGE);
                    let mut s = MemorySection::new();
                    s.memory(wasm_encoder::MemoryType {
                        minimum,
                        maximum: self.memory.maximum,
                        memory64: false,
                        shared: false,
                        page_size_log2: None,
                    });
                    out.section(&s);
                }
                Section::Global => {
                    let mut s = GlobalSection::new();
                    let mut values = image.map(|i| i.globals.iter());
                    for g in &self.globals {
                        let ty = wasm_encoder::GlobalType { val_type: g.ty, mutable: g.mutable, shared: false };
                        let init = match values.as_mut().filter(|_| g.mutable).and_then(Iterator::next) {
                            Some(&bits) => const_of(g.kind(), bits),
                            None => ConstExpr::raw(g.init.iter().copied()),
                        };
                        s.global(ty, &init);
                    }
                    out.section(&s);
                }
                Section::Export => {
                    let mut s = ExportSection::new();
                    for (name, kind, index) in &self.exports {
                        let start_up = *kind == ExternalKind::Func && START_UP_EXPORTS.contains(&name.as_str());
                        if image.is_some() && start_up {
                            continue;
                        }
                        s.export(name, export_kind(*kind), *index);
                    }
                    if image.is_none() {
                        for (i, g) in self.globals.iter().enumerate() {
                            if g.mutable {
                                s.export(&global_export(i as u32), ExportKind::Global, i as u32);
                            }
                        }
                    }
                    out.section(&s);
                }
                Section::Start(range) => {
                    if image.is_none() {
                        copy(&mut out, SectionId::Start as u8, range);
                    }
                }
                Section::DataCount(range) => match &snapshot_data {
                    Some((_, segs)) => {
                        out.section(&wasm_encoder::DataCountSection { count: segs.len() as u32 });
                    }
                    None => copy(&mut out, SectionId::DataCount as u8, range),
                },
                Section::Data(range) => match &snapshot_data {
                    Some((image, segs)) => {
                        out.section(&data_section(&image.memory, segs));
                    }
                    None => copy(&mut out, SectionId::Data as u8, range),
                },
            }
        }
        out.finish()
    }
}

/// A defined global as the rewrite needs it.
fn global_def(bytes: &[u8], g: &wasmparser::Global<'_>) -> Result<GlobalDef, String> {
    let ty = match g.ty.content_type {
        wasmparser::ValType::I32 => wasm_encoder::ValType::I32,
        wasmparser::ValType::I64 => wasm_encoder::ValType::I64,
        wasmparser::ValType::F32 => wasm_encoder::ValType::F32,
        wasmparser::ValType::F64 => wasm_encoder::ValType::F64,
        _ if g.ty.mutable => return Err("it has a mutable global of reference or vector type".into()),
        other => encoder_val_type(other)?,
    };
    if g.ty.shared {
        return Err("it has a shared global".into());
    }
    let range = g.init_expr.get_binary_reader().range();
    // The reader covers the expression and its `end`, which the encoder writes itself.
    let init = bytes.get(range.start..range.end.saturating_sub(1)).unwrap_or_default().to_vec();
    Ok(GlobalDef { ty, mutable: g.ty.mutable, init })
}

impl GlobalDef {
    /// Its type as [`WasmInstance::global`] takes it.
    fn kind(&self) -> ValType {
        match self.ty {
            wasm_encoder::ValType::I32 => ValType::I32,
            wasm_encoder::ValType::I64 => ValType::I64,
            wasm_encoder::ValType::F32 => ValType::F32,
            wasm_encoder::ValType::F64 => ValType::F64,
            _ => ValType::Other,
        }
    }
}

/// An immutable global's reference type, for the rewrite.
fn encoder_val_type(ty: wasmparser::ValType) -> Result<wasm_encoder::ValType, String> {
    match ty {
        wasmparser::ValType::Ref(r) if r == wasmparser::RefType::FUNCREF => Ok(wasm_encoder::ValType::FUNCREF),
        wasmparser::ValType::Ref(r) if r == wasmparser::RefType::EXTERNREF => Ok(wasm_encoder::ValType::EXTERNREF),
        other => Err(format!("it has a global of type {other}, which the snapshot does not write")),
    }
}

/// The instruction name when `op` changes a table or uses a passive segment.
fn table_or_segment_op(op: &Operator<'_>) -> Option<&'static str> {
    Some(match op {
        Operator::TableSet { .. } => "table.set",
        Operator::TableGrow { .. } => "table.grow",
        Operator::TableFill { .. } => "table.fill",
        Operator::TableCopy { .. } => "table.copy",
        Operator::TableInit { .. } => "table.init",
        Operator::ElemDrop { .. } => "elem.drop",
        Operator::MemoryInit { .. } => "memory.init",
        Operator::DataDrop { .. } => "data.drop",
        _ => return None,
    })
}

fn export_kind(kind: ExternalKind) -> ExportKind {
    match kind {
        ExternalKind::Func | ExternalKind::FuncExact => ExportKind::Func,
        ExternalKind::Table => ExportKind::Table,
        ExternalKind::Memory => ExportKind::Memory,
        ExternalKind::Global => ExportKind::Global,
        ExternalKind::Tag => ExportKind::Tag,
    }
}

/// The constant a global of type `ty` holding raw bits `bits` starts at.
fn const_of(ty: ValType, bits: u64) -> ConstExpr {
    match ty {
        ValType::I64 => ConstExpr::i64_const(bits as i64),
        ValType::F32 => ConstExpr::f32_const(wasm_encoder::Ieee32::new(bits as u32)),
        ValType::F64 => ConstExpr::f64_const(wasm_encoder::Ieee64::new(bits)),
        _ => ConstExpr::i32_const(bits as u32 as i32),
    }
}

/// The non-zero runs of `memory` as byte ranges, runs closer than a gap merged, at most
/// [`MAX_SEGMENTS`] of them.
fn segments(memory: &[u8]) -> Vec<Range<usize>> {
    let mut gap = SEGMENT_GAP;
    loop {
        let mut runs: Vec<Range<usize>> = Vec::new();
        let mut at = 0;
        while at < memory.len() {
            let Some(start) = memory[at..].iter().position(|&b| b != 0).map(|p| at + p) else { break };
            let end = memory[start..].iter().position(|&b| b == 0).map_or(memory.len(), |p| start + p);
            match runs.last_mut() {
                Some(last) if start - last.end < gap => last.end = end,
                _ => runs.push(start..end),
            }
            at = end;
        }
        if runs.len() <= MAX_SEGMENTS {
            return runs;
        }
        gap *= 2;
    }
}

fn data_section(memory: &[u8], segments: &[Range<usize>]) -> DataSection {
    let mut s = DataSection::new();
    for r in segments {
        s.active(0, &ConstExpr::i32_const(r.start as u32 as i32), memory[r.clone()].iter().copied());
    }
    s
}

/// One log line a template emitted, to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RecordedLine {
    context_id: u32,
    level: LogLevel,
    bytes: Vec<u8>,
}

/// The log sink of a template: it keeps lines instead of emitting them.
#[derive(Debug, Default)]
struct LogRecorder {
    lines: Mutex<Vec<RecordedLine>>,
}

impl LogSink for LogRecorder {
    fn log(&self, line: &LogLine<'_>) {
        let mut lines = self.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        lines.push(RecordedLine { context_id: line.context_id, level: line.level, bytes: line.bytes.to_vec() });
    }
}

/// Metrics for a template: definitions reach the embedder's store (defining is idempotent, and
/// the ids end up in the snapshot), values stay in a store of the template's own.
#[derive(Debug)]
struct TemplateMetrics {
    real: Arc<dyn Metrics>,
    own: InMemoryMetrics,
}

impl Metrics for TemplateMetrics {
    fn define(&self, kind: MetricType, name: &str, quotas: &Quotas) -> Result<u32, Refused> {
        self.real.define(kind, name, quotas)
    }
    fn increment(&self, id: u32, delta: i64) -> Result<(), Status> {
        self.own.increment(id, delta)
    }
    fn record(&self, id: u32, value: u64) -> Result<(), Status> {
        self.own.record(id, value)
    }
    fn get(&self, id: u32) -> Result<u64, Status> {
        self.own.get(id)
    }
    fn snapshot(&self) -> Vec<MetricSnapshot> {
        self.own.snapshot()
    }
}

/// The services a template runs against: isolated from the embedder's, except for the clock,
/// the properties and metric definitions (see the [module docs](self)).
#[derive(Debug)]
pub struct TemplateServices {
    services: Services,
    log: Arc<LogRecorder>,
}

impl TemplateServices {
    /// Isolated services for a template of a plugin whose services are `real`.
    pub fn new(real: &Services) -> Self {
        let log = Arc::new(LogRecorder::default());
        let services = Services {
            log: log.clone(),
            clock: real.clock.clone(),
            properties: real.properties.clone(),
            shared_data: Arc::new(InMemorySharedData::default()),
            queues: Arc::new(InMemoryQueues::default()),
            metrics: Arc::new(TemplateMetrics { real: real.metrics.clone(), own: InMemoryMetrics::default() }),
            timers: Arc::new(ManualTimers::default()),
            callouts: Arc::new(RecordingCallouts::default()),
            foreign: Arc::new(ForeignFunctions::default()),
        };
        Self { services, log }
    }

    /// The services to give the template's [`VmEnv`](crate::VmEnv).
    pub fn services(&self) -> &Services {
        &self.services
    }
}

/// The host-side half of a snapshot: the root contexts a template's start left, and what
/// every instance replays.
#[derive(Debug, Clone)]
pub struct Started {
    contexts: ContextMap,
    next_context: u32,
    coverage: u128,
    quota_counts: crate::QuotaCounts,
    lines: Vec<RecordedLine>,
    roots: Vec<u32>,
}

impl Started {
    /// Takes the host state of a started template whose services are `services`.
    ///
    /// # Errors
    /// The template holds something a snapshot cannot carry: a context that is not a running
    /// root context, a callout in flight, work waiting for the end of a callback.
    pub fn capture(state: &HostState, services: &TemplateServices) -> Result<Self, String> {
        if !state.callouts.is_empty() {
            return Err("the start left callouts in flight".into());
        }
        if !state.done_ready.is_empty() {
            return Err("the start called proxy_done".into());
        }
        let mut roots = Vec::new();
        for (&id, ctx) in &state.contexts {
            match ctx {
                Context { kind: ContextKind::Root(_), life: Lifecycle::Active, .. } => roots.push(id),
                _ => return Err(format!("the start left context {id}, which is not a running root context")),
            }
        }
        roots.sort_unstable();
        let lines = services.log.lines.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        Ok(Self {
            contexts: state.contexts.clone(),
            next_context: state.next_context,
            coverage: state.coverage,
            quota_counts: state.quota_counts.clone(),
            lines,
            roots,
        })
    }

    /// The root contexts, in creation order.
    pub fn roots(&self) -> &[u32] {
        &self.roots
    }

    /// How many log lines every instance replays.
    pub fn replayed_lines(&self) -> usize {
        self.lines.len()
    }

    /// Gives a fresh instance's host state the template's root contexts, registers their tick
    /// periods with its timers and emits the template's log lines through its log sink.
    pub(crate) fn restore(&self, state: &mut HostState) {
        state.contexts.clone_from(&self.contexts);
        state.next_context = self.next_context;
        state.coverage |= self.coverage;
        state.quota_counts = self.quota_counts.clone();
        for &root in &self.roots {
            if let Some(Context { kind: ContextKind::Root(r), .. }) = state.contexts.get(&root)
                && r.tick_period_ms > 0
            {
                let period = std::time::Duration::from_millis(u64::from(r.tick_period_ms));
                state.env.services.timers.set_tick_period(state.uid, root, Some(period));
            }
        }
        for l in &self.lines {
            let line = LogLine::new(&state.env.vm_id, &state.contexts, l.context_id, l.level, &l.bytes);
            state.env.services.log.log(&line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_classified_name_is_a_host_function() {
        for (name, _) in CLASSES {
            assert!(HOST_FUNCS.iter().any(|f| f.name == *name), "{name} is not in HOST_FUNCS");
        }
    }

    #[test]
    fn policies_parse_from_their_names() {
        for p in SnapshotPolicy::ALL {
            assert_eq!(p.name().parse::<SnapshotPolicy>(), Ok(p));
        }
        assert!("always".parse::<SnapshotPolicy>().unwrap_err().contains("when_safe"));
    }

    #[test]
    fn segments_split_on_long_zero_runs_only() {
        let mut memory = vec![0u8; 10_000];
        memory[10] = 1;
        memory[20] = 2;
        memory[5_000] = 3;
        assert_eq!(segments(&memory), vec![10..21, 5_000..5_001]);
        assert!(segments(&[0; 100]).is_empty());
    }

    #[test]
    fn verdict_names_what_stops_a_snapshot() {
        let log = ["proxy_log", "proxy_get_buffer_bytes", "proxy_set_tick_period_milliseconds"];
        assert_eq!(verdict(log, SnapshotPolicy::WhenSafe), Ok(()));
        let random = [&log[..], &["random_get"]].concat();
        assert!(verdict(random.clone(), SnapshotPolicy::WhenSafe).unwrap_err().contains("random_get"));
        assert_eq!(verdict(random.clone(), SnapshotPolicy::FreezeClockAndRandom), Ok(()));
        let shared = [&random[..], &["proxy_set_shared_data"]].concat();
        let why = verdict(shared, SnapshotPolicy::FreezeClockAndRandom).unwrap_err();
        assert!(why.contains("proxy_set_shared_data"), "{why}");
        assert!(verdict([], SnapshotPolicy::Off).is_err());
    }
}
