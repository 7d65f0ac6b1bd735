//! `cargo run --example chat` runs the `chat` program, whose source is
//! `src/bin/chat.rs`: it is a binary of this crate (so its tests run it through
//! `CARGO_BIN_EXE_chat`), and an example too, so the commands in the README and
//! the docs keep working.

#[path = "../src/bin/chat.rs"]
mod program;

fn main() -> impl std::process::Termination {
    program::main()
}
