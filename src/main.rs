//! The `quotad` binary: parses the command line and calls into the library.

fn main() {
    std::process::exit(quotad::cli::main());
}
