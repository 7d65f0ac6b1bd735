//! `cargo run --example proxy` runs the `proxy` program, whose source is
//! `src/bin/proxy.rs`: it is a binary of this crate (so its tests run it through
//! `CARGO_BIN_EXE_proxy`), and an example too, so the commands in the README and
//! the docs keep working.

#[path = "../src/bin/proxy.rs"]
mod program;

fn main() -> impl std::process::Termination {
    program::main()
}
