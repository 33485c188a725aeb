//! The `quotad` binary: parses the command line and calls into the library.

fn main() {
    eprintln!("quotad {}: no subcommand yet", env!("CARGO_PKG_VERSION"));
    std::process::exit(2);
}
