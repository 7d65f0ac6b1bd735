//! `cargo run --example peer` runs the `peer` program, whose source is
//! `src/bin/peer.rs`: it is a binary of this crate (so its tests run it through
//! `CARGO_BIN_EXE_peer`), and an example too, so the commands in the README and
//! the docs keep working.

#[path = "../src/bin/peer.rs"]
mod program;

fn main() -> impl std::process::Termination {
    program::main()
}
