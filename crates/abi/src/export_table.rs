//! A module's function exports, resolved once per compiled module for the backends: sorted by
//! name for [`ExportTable::find`] (a binary search that allocates nothing), each with its
//! signature and whatever the engine needs to reach it. Every instance of the module shares the
//! table, and a [`FuncRef`] is an index into it, so it means the same export in every instance.

use crate::vm::{ExportDesc, ExternType, FuncRef, FuncType, ValType};

/// A function export: its name, its signature (as `P`: [`ValType`], or an engine's own type
/// codes) and what the engine keeps to reach it (`X`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuncExport<P = ValType, X = ()> {
    /// The export's name.
    pub name: Box<str>,
    /// Parameter types.
    pub params: Box<[P]>,
    /// Result types.
    pub results: Box<[P]>,
    /// The engine's handle on the export (an export index, a C name, ...).
    pub extra: X,
}

impl FuncExport {
    /// The export `name` of type `ty`, with nothing more.
    pub fn of(name: &str, ty: &FuncType) -> Self {
        Self {
            name: name.into(),
            params: ty.params.as_slice().into(),
            results: ty.results.as_slice().into(),
            extra: (),
        }
    }
}

impl<P> FuncExport<P> {
    /// The same export, with the engine's handle on it.
    pub fn with<X>(self, extra: X) -> FuncExport<P, X> {
        FuncExport { name: self.name, params: self.params, results: self.results, extra }
    }
}

/// The function exports of a module (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportTable<P = ValType, X = ()> {
    funcs: Box<[FuncExport<P, X>]>,
    /// How many of `funcs`, from the start, [`Self::find`] searches; the rest are unlisted.
    listed: usize,
}

impl<P, X> ExportTable<P, X> {
    /// The function exports among `exports`, each as `entry` makes it (`None` leaves it out:
    /// an export the engine cannot call, or one the backend added).
    pub fn new(exports: &[ExportDesc], mut entry: impl FnMut(&str, &FuncType) -> Option<FuncExport<P, X>>) -> Self {
        let mut funcs: Vec<FuncExport<P, X>> = exports
            .iter()
            .filter_map(|e| match &e.ty {
                ExternType::Func(ty) => entry(&e.name, ty),
                _ => None,
            })
            .collect();
        funcs.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let listed = funcs.len();
        Self { funcs: funcs.into(), listed }
    }

    /// Adds a function [`Self::find`] does not see (a start function the backend calls itself);
    /// [`Self::unlisted`] gives it.
    #[must_use]
    pub fn with_unlisted(self, func: FuncExport<P, X>) -> Self {
        let mut funcs = self.funcs.into_vec();
        funcs.push(func);
        Self { funcs: funcs.into(), listed: self.listed }
    }

    /// The listed export named `name`.
    pub fn find(&self, name: &str) -> Option<FuncRef> {
        let listed = self.funcs.get(..self.listed)?;
        let i = listed.binary_search_by(|f| (*f.name).cmp(name)).ok()?;
        u32::try_from(i).ok().map(FuncRef)
    }

    /// The first function added by [`Self::with_unlisted`], if any.
    pub fn unlisted(&self) -> Option<FuncRef> {
        if self.funcs.len() > self.listed { u32::try_from(self.listed).ok().map(FuncRef) } else { None }
    }

    /// The export `func` refers to.
    pub fn get(&self, func: FuncRef) -> Option<&FuncExport<P, X>> {
        self.funcs.get(func.0 as usize)
    }

    /// The number of functions in the table, unlisted ones included.
    pub fn len(&self) -> usize {
        self.funcs.len()
    }

    /// Whether the table has no function.
    pub fn is_empty(&self) -> bool {
        self.funcs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(name: &str, ty: ExternType) -> ExportDesc {
        ExportDesc { name: name.into(), ty }
    }

    #[test]
    fn functions_are_found_by_name_and_unlisted_ones_are_not() {
        let f = |params: Vec<ValType>| ExternType::Func(FuncType { params, results: vec![ValType::I32] });
        let exports = [
            export("proxy_on_tick", f(vec![ValType::I32])),
            export("memory", ExternType::Memory),
            export("malloc", f(vec![ValType::I32])),
            export("_initialize", f(vec![])),
        ];
        let table = ExportTable::new(&exports, |name, ty| Some(FuncExport::of(name, ty).with(name.len())))
            .with_unlisted(FuncExport::of("start", &FuncType { params: vec![], results: vec![] }).with(0));
        assert_eq!(table.len(), 4);
        let names: Vec<&str> = (0..4).filter_map(|i| table.get(FuncRef(i))).map(|f| &*f.name).collect();
        assert_eq!(names, ["_initialize", "malloc", "proxy_on_tick", "start"]);
        let tick = table.find("proxy_on_tick").and_then(|f| table.get(f));
        assert_eq!(tick.map(|f| (&*f.params, f.extra)), Some((&[ValType::I32][..], 13)));
        assert_eq!(table.find("memory"), None);
        assert_eq!(table.find("start"), None);
        assert_eq!(table.unlisted(), Some(FuncRef(3)));
        let none = ExportTable::new(&exports, |name, ty| (name != "malloc").then(|| FuncExport::of(name, ty)));
        assert_eq!((none.len(), none.find("malloc"), none.unlisted()), (2, None, None));
    }
}
