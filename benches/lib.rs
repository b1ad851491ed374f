//! The criterion benches of wasmux, in their own crate: each bench runs the same work on every
//! engine compiled in (features named after the engines, `all-engines` for all), with ids
//! `{engine}/{group}/{case}`. The library is empty; the benches are the point:
//!
//! ```sh
//! cargo bench -p wasmux-benches --features all-engines --bench startup
//! ```
//!
//! `wasmux bench` (the CLI) runs the same work as one command and writes a report.
