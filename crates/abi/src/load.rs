//! Load-time checks: ABI version detection and import/export validation.
//!
//! A module is checked against the host before any of its code runs. Every problem is
//! collected, so one error lists every missing or mistyped item, instead of a link failure on
//! the first one or a silent failure at request time.

use crate::exports::Callback;
use crate::hostcalls::find_host_func;
use crate::vm::{ExternType, ValType, WasmModule};
use crate::{AbiVersion, Error, Incompatibility, Result};

/// What the host learned about a module at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// The declared ABI version.
    pub abi: AbiVersion,
    /// Name of the allocator export the host will use.
    pub allocator: &'static str,
    /// Known callbacks the module exports.
    pub callbacks: Vec<&'static str>,
}

const MARKER_PREFIX: &str = "proxy_abi_version_";

/// Finds the ABI version from the marker exports.
///
/// # Errors
/// No marker, only unknown markers, or markers for two different versions.
pub fn detect_abi(module: &dyn WasmModule) -> Result<AbiVersion, Vec<Incompatibility>> {
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for e in module.exports() {
        let Some(_) = e.name.strip_prefix(MARKER_PREFIX) else { continue };
        if !matches!(e.ty, ExternType::Func(_)) {
            continue;
        }
        match AbiVersion::from_marker(&e.name) {
            Some(v) => known.push(v),
            None => unknown.push(e.name.clone()),
        }
    }
    match known.as_slice() {
        [v] => Ok(*v),
        [] if unknown.is_empty() => Err(vec![Incompatibility::MissingAbiMarker]),
        [] => Err(unknown.into_iter().map(Incompatibility::UnknownAbiMarker).collect()),
        many => {
            Err(vec![Incompatibility::ConflictingAbiMarkers(many.iter().map(|v| v.marker().to_string()).collect())])
        }
    }
}

/// Checks every import and export of a module against the host for its ABI version.
///
/// # Errors
/// [`Error::Incompatible`] listing every problem.
pub fn check_module(module: &dyn WasmModule) -> Result<ModuleInfo> {
    let abi = match detect_abi(module) {
        Ok(v) => v,
        Err(mut problems) => {
            // Still report import problems against the newest version, so a user sees
            // everything at once.
            problems.extend(check_imports(module, AbiVersion::V0_2_1));
            return Err(Error::Incompatible(problems));
        }
    };
    let mut problems = check_imports(module, abi);

    let mut callbacks = Vec::new();
    let mut has_memory = false;
    for e in module.exports() {
        match &e.ty {
            ExternType::Memory if e.name == "memory" => has_memory = true,
            ExternType::Func(ty) => {
                let Some(cb) = Callback::ALL.iter().find(|c| c.name() == e.name) else { continue };
                if !cb.versions().contains(abi) {
                    continue;
                }
                let want = cb.signature(abi);
                if *ty != want {
                    problems.push(Incompatibility::ExportSignature {
                        name: e.name.clone(),
                        expected: want.to_string(),
                        found: ty.to_string(),
                    });
                } else {
                    callbacks.push(cb.name());
                }
            }
            _ => {}
        }
    }
    if !has_memory {
        problems.push(Incompatibility::MissingExport("memory".into()));
    }
    let allocator = ["malloc", "proxy_on_memory_allocate"].into_iter().find(|n| callbacks.contains(n));
    if allocator.is_none() {
        problems.push(Incompatibility::MissingExport("malloc or proxy_on_memory_allocate".into()));
    }
    if !problems.is_empty() {
        return Err(Error::Incompatible(problems));
    }
    Ok(ModuleInfo { abi, allocator: allocator.unwrap_or("malloc"), callbacks })
}

fn check_imports(module: &dyn WasmModule, abi: AbiVersion) -> Vec<Incompatibility> {
    let mut problems = Vec::new();
    for imp in module.imports() {
        let ExternType::Func(found) = &imp.ty else {
            problems.push(Incompatibility::UnsupportedImport {
                module: imp.module.clone(),
                name: imp.name.clone(),
                kind: imp.ty.kind().into(),
            });
            continue;
        };
        let Some(f) = find_host_func(&imp.module, &imp.name) else {
            problems.push(Incompatibility::UnknownImport { module: imp.module.clone(), name: imp.name.clone() });
            continue;
        };
        if !f.versions.contains(abi) {
            problems.push(Incompatibility::ImportNotInVersion {
                module: imp.module.clone(),
                name: imp.name.clone(),
                version: abi.as_str(),
            });
            continue;
        }
        if found.params != f.params || found.results != f.results {
            problems.push(Incompatibility::ImportSignature {
                module: imp.module.clone(),
                name: imp.name.clone(),
                expected: f.ty().to_string(),
                found: found.to_string(),
            });
        }
    }
    let _ = ValType::I32;
    problems
}
