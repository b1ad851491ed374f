//! The compile-time half of deadlines and the memory and table limits: a wasmer middleware that
//! meters every function and routes `memory.grow` and `table.grow` through the host.
//!
//! The module gets three hidden host imports, appended after its own imported functions (so its
//! defined functions move up by three; every reference to them is renumbered here):
//!
//! - `wasmux:limits.refuel(required: i64) -> i64`: called when the points run out; returns a
//!   fresh slice of at least `required` points, or traps (deadline, interrupt);
//! - `wasmux:limits.grow_allowed(pages: i32, delta: i32) -> i32`: whether memory may grow from
//!   `pages` by `delta` pages under the instance's limit (the host notes a refusal);
//! - `wasmux:limits.table_grow_delta(elements: i64, delta: i32) -> i32`: the delta a
//!   `table.grow` of `delta` elements goes on with, given `elements` in all the tables of the
//!   instance: `delta` itself, or -1 (`u32::MAX` elements, which no table can grow by: the
//!   store's tunables cap every table's maximum far below it) when the total would exceed the
//!   instance's limit.
//!
//! and two mutable globals: the remaining points (exported as [`POINTS_EXPORT`]) and a scratch
//! `i32`. Metering is one point per operator, charged before each operator that branches or
//! ends a block (the points of the straight-line code before it), as wasmer's own metering
//! middleware does:
//!
//! ```wat
//! (if (i64.lt_u (global.get $points) (i64.const COST))
//!   (then (global.set $points (i64.add (call $refuel (i64.const COST)) (global.get $points)))))
//! (global.set $points (i64.sub (global.get $points) (i64.const COST)))
//! ```
//!
//! and `memory.grow $m` becomes
//!
//! ```wat
//! (global.set $scratch)                     ;; the delta
//! (if (result i32) (call $grow_allowed (memory.size $m) (global.get $scratch))
//!   (then (memory.grow $m (global.get $scratch)))
//!   (else (i32.const -1)))
//! ```
//!
//! and `table.grow $t` (operands: the initial value, the delta) becomes, for a module with
//! tables `0..n`,
//!
//! ```wat
//! global.set $scratch                       ;; the delta (the initial value stays on the stack)
//! i64.const 0
//! table.size 0  i64.extend_i32_u  i64.add   ;; ... once for each table, 0 to n-1
//! global.get $scratch
//! call $table_grow_delta
//! table.grow $t
//! ```
//!
//! The sizes are read at each growth, so a growth the table refuses for its own reasons (its
//! declared maximum) leaves nothing to correct.
//!
//! Function bodies are validated by wasmer before this runs; the injected code is valid by
//! construction. The start function keeps running at instantiation, with the imports already
//! in place.

use std::sync::Mutex;

use wasmer::sys::wasmparser::{BlockType, Operator, ValType};
use wasmer::sys::{FunctionMiddleware, MiddlewareError, MiddlewareReaderState, ModuleMiddleware};
use wasmer::{ExportIndex, FunctionType, GlobalInit, GlobalType, LocalFunctionIndex, ModuleInfo, Mutability, Type};
use wasmer_types::entity::EntityRef;
use wasmer_types::entity::packed_option::ReservedValue as _;
use wasmer_types::{FunctionIndex, GlobalIndex, ImportIndex, ImportKey, SignatureHash};

/// Bumped whenever the injected code changes: part of the engine fingerprint.
pub(crate) const VERSION: u32 = 2;

/// The import module of the hidden host functions.
pub(crate) const IMPORT_MODULE: &str = "wasmux:limits";
/// The hidden import that grants metering points.
pub(crate) const REFUEL: &str = "refuel";
/// The hidden import that checks a memory growth against the limit.
pub(crate) const GROW_ALLOWED: &str = "grow_allowed";
/// The hidden import that checks a table growth against the limit.
pub(crate) const TABLE_GROW_DELTA: &str = "table_grow_delta";
/// The export of the remaining-points global.
pub(crate) const POINTS_EXPORT: &str = "wasmux:points";
/// Prefix of every hidden name.
pub(crate) const HIDDEN_PREFIX: &str = "wasmux:";
/// How many functions the middleware imports.
pub(crate) const HIDDEN_FUNCS: u32 = 3;

/// Where the middleware put its functions and globals in one module.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Imported functions of the original module: the index of `refuel`.
    imported: u32,
    points: u32,
    scratch: u32,
    /// Tables of the module (imported or defined).
    tables: u32,
}

/// The module middleware. Wasmer applies a middleware to one module at a time (the engine is
/// locked during a compile) and each [`WasmerEngine`](crate::WasmerEngine) compile builds a
/// fresh one anyway, so the layout of the module being compiled is simply kept here.
#[derive(Debug, Default)]
pub(crate) struct Limiting {
    layout: Mutex<Option<Layout>>,
}

impl ModuleMiddleware for Limiting {
    fn generate_function_middleware<'a>(&self, _: LocalFunctionIndex) -> Box<dyn FunctionMiddleware<'a> + 'a> {
        let layout = *self.layout.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Box::new(FunctionLimiting { layout, cost: 0 })
    }

    fn transform_module_info(&self, info: &mut ModuleInfo) -> Result<(), MiddlewareError> {
        let reserved = info.imports.keys().any(|k| k.module.starts_with(HIDDEN_PREFIX))
            || info.exports.keys().any(|name| name.starts_with(HIDDEN_PREFIX));
        if reserved {
            return Err(MiddlewareError::new(
                "wasmux",
                format!("import and export names starting with `{HIDDEN_PREFIX}` are reserved"),
            ));
        }
        let imported = info.num_imported_functions;
        let too_many = || MiddlewareError::new("wasmux", "too many functions");
        let imported_u32 = u32::try_from(imported).map_err(|_| too_many())?;
        let shift = |f: FunctionIndex| {
            if f.index() >= imported && f != FunctionIndex::reserved_value() {
                FunctionIndex::new(f.index() + HIDDEN_FUNCS as usize)
            } else {
                f
            }
        };

        // The hidden imports, right after the module's own imported functions.
        let refuel = push_signature(info, FunctionType::new([Type::I64], [Type::I64]));
        let grow = push_signature(info, FunctionType::new([Type::I32, Type::I32], [Type::I32]));
        let table_grow = push_signature(info, FunctionType::new([Type::I64, Type::I32], [Type::I32]));
        let mut functions: Vec<_> = info.functions.values().copied().collect();
        functions.splice(imported..imported, [refuel, grow, table_grow]);
        info.functions = functions.into_iter().collect();
        info.num_imported_functions += HIDDEN_FUNCS as usize;
        for (i, field) in [REFUEL, GROW_ALLOWED, TABLE_GROW_DELTA].into_iter().enumerate() {
            let import_idx = u32::try_from(info.imports.len()).map_err(|_| too_many())?;
            let key = ImportKey { module: IMPORT_MODULE.into(), field: field.into(), import_idx };
            info.imports.insert(key, ImportIndex::Function(FunctionIndex::new(imported + i)));
        }

        // Every reference to a defined function moves up.
        for export in info.exports.values_mut() {
            if let ExportIndex::Function(f) = export {
                *f = shift(*f);
            }
        }
        info.start_function = info.start_function.map(shift);
        for init in &mut info.table_initializers {
            init.elements.iter_mut().for_each(|f| *f = shift(*f));
        }
        for elements in info.passive_elements.values_mut() {
            elements.iter_mut().for_each(|f| *f = shift(*f));
        }
        for init in info.global_initializers.values_mut() {
            if let GlobalInit::RefFunc(f) = init {
                *f = shift(*f);
            }
        }
        info.function_names =
            std::mem::take(&mut info.function_names).into_iter().map(|(f, n)| (shift(f), n)).collect();

        // The globals, after the module's own.
        let points = info.globals.push(GlobalType::new(Type::I64, Mutability::Var));
        info.global_initializers.push(GlobalInit::I64Const(0));
        let scratch = info.globals.push(GlobalType::new(Type::I32, Mutability::Var));
        info.global_initializers.push(GlobalInit::I32Const(0));
        info.exports.insert(POINTS_EXPORT.into(), ExportIndex::Global(points));

        let index =
            |g: GlobalIndex| u32::try_from(g.index()).map_err(|_| MiddlewareError::new("wasmux", "too many globals"));
        let tables = u32::try_from(info.tables.len()).map_err(|_| MiddlewareError::new("wasmux", "too many tables"))?;
        let layout = Layout { imported: imported_u32, points: index(points)?, scratch: index(scratch)?, tables };
        *self.layout.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(layout);
        Ok(())
    }
}

/// Appends a signature (and its hash, which indirect calls check).
fn push_signature(info: &mut ModuleInfo, ty: FunctionType) -> wasmer_types::SignatureIndex {
    info.signature_hashes.push(SignatureHash::new(ty.signature_hash()));
    info.signatures.push(ty)
}

/// The middleware of one function.
#[derive(Debug)]
struct FunctionLimiting {
    /// `None` only if wasmer skipped `transform_module_info`, which it does not.
    layout: Option<Layout>,
    /// Points of the operators since the last charge.
    cost: u64,
}

impl<'a> FunctionMiddleware<'a> for FunctionLimiting {
    fn feed(&mut self, op: Operator<'a>, state: &mut MiddlewareReaderState<'a>) -> Result<(), MiddlewareError> {
        let Some(l) = self.layout else {
            return Err(MiddlewareError::new("wasmux", "function compiled before its module was transformed"));
        };
        self.cost += 1;
        if charges(&op) {
            let cost = i64::try_from(std::mem::take(&mut self.cost)).unwrap_or(i64::MAX);
            state.extend([
                Operator::GlobalGet { global_index: l.points },
                Operator::I64Const { value: cost },
                Operator::I64LtU,
                Operator::If { blockty: BlockType::Empty },
                Operator::I64Const { value: cost },
                Operator::Call { function_index: l.imported },
                Operator::GlobalGet { global_index: l.points },
                Operator::I64Add,
                Operator::GlobalSet { global_index: l.points },
                Operator::End,
                Operator::GlobalGet { global_index: l.points },
                Operator::I64Const { value: cost },
                Operator::I64Sub,
                Operator::GlobalSet { global_index: l.points },
            ]);
        }
        let shift = |f: u32| if f >= l.imported { f + HIDDEN_FUNCS } else { f };
        match op {
            Operator::Call { function_index } => {
                state.push_operator(Operator::Call { function_index: shift(function_index) })
            }
            Operator::ReturnCall { function_index } => {
                state.push_operator(Operator::ReturnCall { function_index: shift(function_index) });
            }
            Operator::RefFunc { function_index } => {
                state.push_operator(Operator::RefFunc { function_index: shift(function_index) });
            }
            Operator::MemoryGrow { mem } => state.extend([
                Operator::GlobalSet { global_index: l.scratch },
                Operator::MemorySize { mem },
                Operator::GlobalGet { global_index: l.scratch },
                Operator::Call { function_index: l.imported + 1 },
                Operator::If { blockty: BlockType::Type(ValType::I32) },
                Operator::GlobalGet { global_index: l.scratch },
                Operator::MemoryGrow { mem },
                Operator::Else,
                Operator::I32Const { value: -1 },
                Operator::End,
            ]),
            Operator::TableGrow { table } => {
                state.extend([Operator::GlobalSet { global_index: l.scratch }, Operator::I64Const { value: 0 }]);
                for t in 0..l.tables {
                    state.extend([Operator::TableSize { table: t }, Operator::I64ExtendI32U, Operator::I64Add]);
                }
                state.extend([
                    Operator::GlobalGet { global_index: l.scratch },
                    Operator::Call { function_index: l.imported + 2 },
                    Operator::TableGrow { table },
                ]);
            }
            op => state.push_operator(op),
        }
        Ok(())
    }
}

/// Whether the points of the code before `op` are charged before it: `op` is a branch, a
/// call, or the start or end of a block (a branch target).
fn charges(op: &Operator<'_>) -> bool {
    use Operator as O;
    matches!(
        op,
        O::Loop { .. }
            | O::End
            | O::If { .. }
            | O::Else
            | O::Br { .. }
            | O::BrIf { .. }
            | O::BrTable { .. }
            | O::Return
            | O::Call { .. }
            | O::CallIndirect { .. }
            | O::CallRef { .. }
            | O::ReturnCall { .. }
            | O::ReturnCallIndirect { .. }
            | O::ReturnCallRef { .. }
            | O::Throw { .. }
            | O::ThrowRef
            | O::Rethrow { .. }
            | O::TryTable { .. }
            | O::Catch { .. }
            | O::CatchAll
            | O::Delegate { .. }
            | O::BrOnNull { .. }
            | O::BrOnNonNull { .. }
            | O::BrOnCast { .. }
            | O::BrOnCastFail { .. }
    )
}
