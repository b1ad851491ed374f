//! The `wasmux` command: inspect a proxy-wasm filter, and run it through a scenario on any
//! engine compiled in.

#![forbid(unsafe_code)]

mod bench;
mod conformance;
mod test;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wasmux::abi::{self, ExternType, Incompatibility, find_host_func};
use wasmux::{Runtime, scenario};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "wasmux", version, about = "Run and inspect proxy-wasm filters on any engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print a module's ABI version, imports, exports and whether this host can run it.
    /// Exits 1 when it cannot, naming every missing or mistyped import.
    Inspect {
        /// The `.wasm` file.
        file: PathBuf,
        /// Engine used to parse the module.
        #[arg(long, default_value_t = Runtime::default().name().to_string())]
        engine: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Drive a filter through a scenario and print the observable outcome as JSON.
    Run {
        /// The `.wasm` file.
        file: PathBuf,
        /// Engine to run on.
        #[arg(long, default_value_t = Runtime::default().name().to_string())]
        engine: String,
        /// Scenario file (JSON); see README.md.
        #[arg(long)]
        scenario: PathBuf,
        /// Compile from scratch: do not use the compiled-module cache (by default
        /// `$WASMUX_CACHE_DIR`, else `$XDG_CACHE_HOME/wasmux`, else `~/.cache/wasmux`).
        #[arg(long)]
        no_cache: bool,
    },
    /// Run the reverse proxy: listeners, routes to clusters, proxy-wasm filter chains (see
    /// README.md for the configuration). Stops on SIGINT or SIGTERM, draining requests in
    /// flight. Set `WASMUX_LOG=info` to see it start.
    Serve {
        /// Configuration file (YAML); module paths are relative to it.
        #[arg(long)]
        config: PathBuf,
        /// Check the configuration and load every plugin, then exit without serving.
        #[arg(long)]
        check: bool,
    },
    /// List the engines compiled into this binary.
    Engines,
    /// Compare engines on the same work: start-up (cold, from the module cache), per-worker
    /// clones, calls, a request lifecycle, body throughput and memory per instance. Prints an
    /// engine x measure table.
    Bench {
        /// Engine to measure (repeatable; default: every engine compiled in).
        #[arg(long = "engine")]
        engines: Vec<String>,
        /// Your filter, for every filter-based measure (default: the bench-json fixture for
        /// start-up, headers for the request lifecycle and memory, body for throughput).
        #[arg(long)]
        filter: Option<PathBuf>,
        /// Plugin configuration given to `--filter`.
        #[arg(long)]
        config: Option<String>,
        /// Also write the results as JSON to this file (input of scripts/bench-report.py).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Timed runs per measure; the median is reported.
        #[arg(long, default_value_t = 15)]
        runs: usize,
        /// Internal: measure memory per instance only (run by `wasmux bench` in a child process).
        #[arg(long, hide = true)]
        rss_child: bool,
    },
    /// Run filter tests: test files (YAML or JSON) with expectations, on every engine chosen.
    /// Prints the test x engine matrix and each failure, expected against actual, with the
    /// log lines behind it; exits 1 when a test fails. See README.md ("Testing a filter").
    Test {
        /// Test files, or directories searched for them (`*.yaml`, `*.yml`, `*.json` with a
        /// top-level `tests` list).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Engine to run on (repeatable; default: every engine compiled in).
        #[arg(long = "engine")]
        engines: Vec<String>,
        /// Every engine compiled in (the default when no `--engine` is given).
        #[arg(long, conflicts_with = "engines")]
        all_engines: bool,
        /// The filter module, instead of the files' `module` (`.wasm` or `.wat`).
        #[arg(long)]
        module: Option<PathBuf>,
        /// The filter's native build for the null engine, instead of the files' `native`.
        #[arg(long)]
        native: Option<PathBuf>,
        /// Only the tests whose name contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Also write the results as JUnit XML to this file.
        #[arg(long)]
        junit: Option<PathBuf>,
        /// Print the ABI trace (every host call, to stderr) of the tests run: combine with
        /// `--filter` and one `--engine`.
        #[arg(long)]
        trace: bool,
        /// Time each passing test: the median of N runs (default 20) per engine.
        #[arg(long, num_args = 0..=1, default_missing_value = "20", value_name = "N")]
        bench: Option<usize>,
        /// Start the plugins from snapshots (`when_safe` or `freeze_clock_and_random`; see the
        /// README, "Start-up snapshots"): the same expectations must hold, and the output says
        /// whether each VM started from one, or why not.
        #[arg(long, default_value = "off")]
        snapshot: wasmux::SnapshotPolicy,
    },
    /// Run the conformance suite: prints the engine x case matrix and the host-function
    /// coverage table; exits 1 on any failure.
    Conformance {
        /// Engine to run on (repeatable; default: every engine compiled in).
        #[arg(long = "engine")]
        engines: Vec<String>,
        /// Directory of case files (default: the suite's own `conformance/cases`).
        #[arg(long)]
        cases: Option<PathBuf>,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    use std::io::IsTerminal as _;
    let cli = Cli::parse();
    let filter = match (&cli.command, std::env::var("WASMUX_LOG")) {
        // `wasmux test --trace`: the host-call trace, plus whatever WASMUX_LOG asks for.
        (Command::Test { trace: true, .. }, Ok(v)) => format!("{v},wasmux::strace=trace"),
        (Command::Test { trace: true, .. }, Err(_)) => "warn,wasmux::strace=trace".to_string(),
        (_, Ok(v)) => v,
        (_, Err(_)) => "warn".to_string(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Prints a line to stdout. A closed pipe (`wasmux inspect ... | head`) ends the command
/// quietly: nobody reads the rest.
fn print_out(text: &str) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{text}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(2);
    }
}

/// Writes a JSON value to stdout as it serializes (no copy of the whole text), then a newline;
/// a closed pipe ends the command quietly, as in [`print_out`].
fn write_json(value: &serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = serde_json::to_writer_pretty(&mut out, value)
        .map_err(std::io::Error::from)
        .and_then(|()| writeln!(out))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to stdout: {e}");
        std::process::exit(2);
    }
}

/// `println!` that never panics (see [`print_out`]).
macro_rules! out {
    ($($arg:tt)*) => { print_out(&format!($($arg)*)) };
}

type AnyError = Box<dyn std::error::Error>;

/// The per-user compiled-module cache: `$WASMUX_CACHE_DIR`, else `$XDG_CACHE_HOME/wasmux`, else
/// `$HOME/.cache/wasmux`. `None` (compile every time, with a warning) when none can be opened.
fn user_cache() -> Option<wasmux::ModuleCache> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    let dir = var("WASMUX_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("wasmux")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("wasmux")))?;
    match wasmux::ModuleCache::on_disk(&dir) {
        Ok(cache) => Some(cache),
        Err(e) => {
            eprintln!("warning: compiled-module cache {} unavailable, compiling: {e}", dir.display());
            None
        }
    }
}

/// Reads a module: wasm binary, or the WebAssembly text format (assembled here).
fn read(file: &PathBuf) -> Result<Vec<u8>, AnyError> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if bytes.starts_with(b"\0asm") || file.extension().is_none_or(|e| e != "wat") {
        return Ok(bytes);
    }
    wat::parse_bytes(&bytes).map(|b| b.into_owned()).map_err(|e| format!("{}: {e}", file.display()).into())
}

fn run(cmd: Command) -> Result<ExitCode, AnyError> {
    match cmd {
        Command::Engines => {
            for r in Runtime::available() {
                out!("{r}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Conformance { engines, cases, json } => conformance::run(&engines, cases, json),
        Command::Test { paths, engines, all_engines: _, module, native, filter, junit, trace, bench, snapshot } => {
            test::run(test::Args { paths, engines, module, native, filter, junit, trace, bench, snapshot })
        }
        Command::Bench { engines, filter, config, json, runs, rss_child } => {
            let command = std::iter::once("wasmux".to_string()).chain(std::env::args().skip(1)).collect::<Vec<_>>();
            bench::run(bench::Args { engines, filter, config, json, runs, command: command.join(" "), rss_child })
        }
        Command::Inspect { file, engine, json } => inspect(&read(&file)?, engine.parse()?, json),
        Command::Serve { config, check } => {
            let (cfg, base) = wasmux_proxy::Config::from_file(&config)?;
            if check {
                wasmux_proxy::build(&cfg, &base)?;
                out!("{}: configuration and plugins are valid", config.display());
                return Ok(ExitCode::SUCCESS);
            }
            wasmux_proxy::run(&cfg, &base)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { file, engine, scenario: path, no_cache } => {
            let wasm = read(&file)?;
            let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let sc = scenario::Scenario::from_json(&text)?;
            let cache = if no_cache { None } else { user_cache() };
            // Modules named by `plugins[].module` are paths relative to the scenario file.
            let base = path.parent().map(std::path::Path::to_path_buf).unwrap_or_default();
            let loader = |name: &str| read(&base.join(name)).map_err(|e| e.to_string());
            let record = scenario::run_with(engine.parse()?, &wasm, &sc, cache.as_ref(), Some(&loader))?;
            write_json(&record);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn inspect(wasm: &[u8], runtime: Runtime, json: bool) -> Result<ExitCode, AnyError> {
    let engine = runtime.engine()?;
    let module = engine.compile(wasm)?;
    let abi = abi::detect_abi(&*module);
    let check = abi::check_module(&*module);
    let problems: Vec<Incompatibility> = match &check {
        Ok(_) => Vec::new(),
        Err(abi::Error::Incompatible(p)) => p.clone(),
        Err(e) => return Err(e.to_string().into()),
    };
    let imports: Vec<serde_json::Value> = module
        .imports()
        .iter()
        .map(|i| {
            let ty = match &i.ty {
                ExternType::Func(f) => f.to_string(),
                other => other.kind().to_string(),
            };
            let provided = find_host_func(&i.module, &i.name).is_some();
            serde_json::json!({"module": i.module, "name": i.name, "type": ty, "provided": provided})
        })
        .collect();
    let exports: Vec<serde_json::Value> =
        module.exports().iter().map(|e| serde_json::json!({"name": e.name, "kind": e.ty.kind()})).collect();
    let version = abi.as_ref().ok().map(|v| v.as_str());
    if json {
        let out = serde_json::json!({
            "abi_version": version,
            "compatible": problems.is_empty(),
            "problems": problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "imports": imports,
            "exports": exports,
        });
        print_out(&serde_json::to_string_pretty(&out)?);
    } else {
        out!("ABI version: {}", version.unwrap_or("unknown"));
        out!("imports ({}):", imports.len());
        for i in module.imports() {
            let ty = match &i.ty {
                ExternType::Func(f) => f.to_string(),
                other => other.kind().to_string(),
            };
            out!("  {}.{} {ty}", i.module, i.name);
        }
        out!("exports ({}):", exports.len());
        for e in module.exports() {
            out!("  {} ({})", e.name, e.ty.kind());
        }
        if problems.is_empty() {
            out!("compatible: yes ({})", runtime);
        } else {
            out!("compatible: no");
            for p in &problems {
                out!("  - {p}");
            }
        }
    }
    Ok(if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
