//! `cargo run --example discovery` runs the `discovery` program, whose source is
//! `src/bin/discovery.rs`: it is a binary of this crate (so its tests run it through
//! `CARGO_BIN_EXE_discovery`), and an example too, so the commands in the README and
//! the docs keep working.

#[path = "../src/bin/discovery.rs"]
mod program;

fn main() -> impl std::process::Termination {
    program::main()
}
