//! The `prodigy` binary: hands the process's streams to the library's command line.

use std::io::{BufReader, IsTerminal};
use std::sync::{Arc, Mutex};

use prodigy::cli::output::Printable;

fn main() {
    // Shell completion asked by the script `prodigy completions SHELL` installs
    // (`PRODIGY_COMPLETE=SHELL prodigy -- WORDS…`): the candidates, job ids among them.
    clap_complete::CompleteEnv::with_factory(|| {
        <prodigy::cli::Cli as clap::CommandFactory>::command()
    })
    .var(prodigy::cli::commands::completions::COMPLETE_ENV)
    .complete();
    // A file-size limit (`ulimit -f`) must fail the write with EFBIG and give a clear
    // error, not kill the process mid-write with SIGXFSZ: a handler (which only sets a
    // flag nobody reads) replaces the default action.
    let _ = signal_hook::flag::register(
        signal_hook::consts::SIGXFSZ,
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
    );
    // On a terminal, control characters in what is printed are shown as escapes. Output is
    // written 64 KiB at a time (as input is read), not 8 KiB (`events show` of 100 MB made
    // 12,000 writes).
    let stdout = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout());
    let stdout: Box<dyn std::io::Write + Send> = if std::io::stdout().is_terminal() {
        Box::new(Printable::new(stdout))
    } else {
        Box::new(stdout)
    };
    let io = prodigy::cli::Io {
        stdin: BufReader::with_capacity(1 << 16, Box::new(std::io::stdin())),
        stdin_is_fd0: true,
        stdout,
        // Diagnostics escape their own text (their colours must pass).
        stderr: Arc::new(Mutex::new(std::io::stderr())),
        stderr_is_terminal: std::io::stderr().is_terminal(),
    };
    std::process::exit(prodigy::cli::main(std::env::args_os(), io));
}
