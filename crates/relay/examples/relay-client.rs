//! `cargo run --example relay-client` runs the `relay-client` program, whose source is
//! `src/bin/relay-client.rs`: it is a binary of this crate (so its tests run it through
//! `CARGO_BIN_EXE_relay-client`), and an example too, so the commands in the README and
//! the docs keep working.

#[path = "../src/bin/relay-client.rs"]
mod program;

fn main() -> impl std::process::Termination {
    program::main()
}
