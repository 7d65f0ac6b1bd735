//! `cargo run --example relay` runs the `relay` program, whose source is
//! `src/bin/relay.rs`: it is a binary of this crate (so its tests run it through
//! `CARGO_BIN_EXE_relay`), and an example too, so the commands in the README and
//! the docs keep working.

#[path = "../src/bin/relay.rs"]
mod program;

fn main() -> impl std::process::Termination {
    program::main()
}
