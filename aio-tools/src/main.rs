//! The `aio-tools` binary. Not written yet.
fn main() {
    eprintln!("aio-tools: no subcommand is implemented yet");
    std::process::exit(2);
}
