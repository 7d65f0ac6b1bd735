//! `cargo run --example echo` runs the `echo` program, whose source is
//! `src/bin/echo.rs`: it is a binary of this crate (so its tests run it through
//! `CARGO_BIN_EXE_echo`), and an example too, so the commands in the README and
//! the docs keep working.

#[path = "../src/bin/echo.rs"]
mod program;

fn main() -> impl std::process::Termination {
    program::main()
}
