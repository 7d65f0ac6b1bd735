//! `cargo run --example upper` runs the `upper` program, whose source is
//! `src/bin/upper.rs`: it is a binary of this crate (so its tests run it through
//! `CARGO_BIN_EXE_upper`), and an example too, so the commands in the README and
//! the docs keep working.

#[path = "../src/bin/upper.rs"]
mod program;

fn main() -> impl std::process::Termination {
    program::main()
}
