//! The `prodigy` binary: hands the process's streams to the library's command line.

use std::io::{BufReader, IsTerminal};
use std::sync::{Arc, Mutex};

fn main() {
    let io = prodigy::cli::Io {
        stdin: BufReader::with_capacity(1 << 16, Box::new(std::io::stdin())),
        stdin_is_fd0: true,
        stdout: Box::new(std::io::BufWriter::new(std::io::stdout())),
        stderr: Arc::new(Mutex::new(std::io::stderr())),
        stderr_is_terminal: std::io::stderr().is_terminal(),
    };
    std::process::exit(prodigy::cli::main(std::env::args_os(), io));
}
