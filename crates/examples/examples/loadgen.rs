//! `cargo run --example loadgen` runs the `loadgen` program, whose source is
//! `src/bin/loadgen.rs`: it is a binary of this crate (so its tests run it through
//! `CARGO_BIN_EXE_loadgen`), and an example too, so the commands in the README and
//! the docs keep working.

#[path = "../src/bin/loadgen.rs"]
mod program;

fn main() -> impl std::process::Termination {
    program::main()
}
