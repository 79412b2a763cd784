//! What the man pages say beyond the clap definitions: EXAMPLES for the commands people
//! start with, and on every page EXIT STATUS, ENVIRONMENT and FILES. The pages in `man/`
//! are clap_mangen's with these sections after them (a test keeps them current).

use clap::CommandFactory;

/// The command tree the pages are made from: the CLI's, with the package version alone
/// (the commit `--version` adds would make every commit's pages stale).
pub fn command() -> clap::Command {
    super::Cli::command().version(env!("CARGO_PKG_VERSION"))
}

/// The examples of a page (its file stem: `prodigy`, `prodigy-run`, …), each a command
/// and what it does.
fn examples(page: &str) -> &'static [(&'static str, &'static str)] {
    match page {
        "prodigy" => &[
            (
                "prodigy run examples/file-stats.yml",
                "Run a MapReduce workflow as a new job of this repository; prints its id.",
            ),
            (
                "prodigy jobs",
                "This repository's jobs: phase, counts, running or interrupted.",
            ),
            (
                "prodigy resume JOB",
                "Finish an interrupted job from its checkpoint, even with its worktrees gone.",
            ),
            (
                "prodigy logs JOB --follow",
                "What its steps print, from the store, until it ends.",
            ),
            (
                "git merge prodigy/JOB",
                "Bring a job's result into your branch (or prodigy worktree merge JOB).",
            ),
        ],
        "prodigy-run" => &[
            (
                "prodigy run examples/quick-start.yml",
                "A job of three items; its setup's and reduce's output is shown as it runs.",
            ),
            (
                "prodigy run implement.yml --args 12 --args 13",
                "A sequential workflow once per value, ARG set to it.",
            ),
            (
                "prodigy run w.yml --param NAME=api --profile dev -y",
                "With a variable, the workflow's profile dev, and merge: steps unasked.",
            ),
            (
                "prodigy run w.yml --dry-run",
                "Check every step and variable, print the plan, run nothing.",
            ),
            (
                "prodigy run w.yml --json",
                "One JSON summary on stdout; exit 3 when items failed.",
            ),
        ],
        "prodigy-resume" => &[
            (
                "prodigy resume JOB",
                "Finish the job from its newest checkpoint.",
            ),
            (
                "prodigy resume JOB -y",
                "Also run its merge: steps, which wait for a yes.",
            ),
        ],
        "prodigy-jobs" => &[
            (
                "prodigy jobs --json",
                "Every job with its status (running with pid and host, interrupted, …).",
            ),
            (
                "prodigy jobs show JOB --limit 0",
                "One job with all its checkpoints.",
            ),
            ("prodigy jobs rm JOB -y", "Delete a job; its branch stays."),
        ],
        "prodigy-logs" => &[
            ("prodigy logs JOB", "Every step's output and Claude call."),
            (
                "prodigy logs JOB --item ID --step map/2",
                "One item's second agent step.",
            ),
        ],
        "prodigy-worktree" => &[
            (
                "prodigy worktree ls",
                "The jobs' worktrees, their state and size.",
            ),
            (
                "prodigy worktree clean --dry-run",
                "What a clean would remove (finished jobs', resolved failures').",
            ),
            (
                "prodigy worktree merge JOB",
                "Merge the job's branch into the branch checked out here.",
            ),
        ],
        "prodigy-dlq" => &[
            ("prodigy dlq list JOB", "The job's failed items, by name."),
            (
                "prodigy dlq analyze JOB",
                "Their failures grouped into patterns.",
            ),
            (
                "prodigy dlq retry JOB --filter \"error_type == 'timeout'\"",
                "Run the timed-out ones again.",
            ),
        ],
        "prodigy-events" => &[
            (
                "prodigy events follow JOB",
                "Its events as they land, until it ends.",
            ),
            (
                "prodigy events stats JOB",
                "Counts by type, durations, Claude cost.",
            ),
        ],
        "prodigy-gc" => &[
            ("prodigy gc --dry-run", "What gc would remove."),
            (
                "prodigy gc --prune now --reflog-expire now",
                "Everything unreachable, now.",
            ),
        ],
        "prodigy-fsck" => &[("prodigy fsck", "Verify every object, ref and reflog.")],
        _ => &[],
    }
}

/// Escapes text for roff: backslashes, and a leading `.` or `'`.
fn roff(text: &str) -> String {
    let text = text.replace('\\', "\\e").replace('-', "\\-");
    match text.starts_with(['.', '\'']) {
        true => format!("\\&{text}"),
        false => text,
    }
}

/// The sections that follow clap_mangen's on the page `page` (its file stem), as roff.
pub fn extra_sections(page: &str) -> String {
    let mut out = String::new();
    let examples = examples(page);
    if !examples.is_empty() {
        out.push_str(".SH EXAMPLES\n");
        for (command, what) in examples {
            out.push_str(&format!(".TP\n\\fB{}\\fR\n{}\n", roff(command), roff(what)));
        }
    }
    out.push_str(".SH \"EXIT STATUS\"\n");
    for (code, what) in [
        (
            "0",
            "Success (also when standard output is closed early, as by head).",
        ),
        (
            "1",
            "A failure: the error: line says what, a hint: line what to do.",
        ),
        (
            "2",
            "A usage error: a bad flag or argument (a hostile job id, a time that is none), a malformed filter; or, for events search, an error (like grep).",
        ),
        (
            "3",
            "run, resume and dlq retry: the job ran to its end, but items failed (they are in the dead-letter queue).",
        ),
    ] {
        out.push_str(&format!(".TP\n\\fB{code}\\fR\n{}\n", roff(what)));
    }
    out.push_str(".SH ENVIRONMENT\n");
    for (name, what) in [
        (
            "PRODIGY_HOME",
            "The store's home (default ~/.prodigy; --home beats it).",
        ),
        (
            "PRODIGY_STORE",
            "A remote store, s3://bucket/prefix (--store beats it; else store in config.json).",
        ),
        (
            "PRODIGY_LOCK_TIMEOUT",
            "How long to wait for a ref lock (default 30s).",
        ),
        (
            "PRODIGY_KILL_GRACE",
            "Between SIGTERM and SIGKILL of a stopped step (default 5s).",
        ),
        (
            "PRODIGY_CLAUDE_PATH",
            "The program claude: steps run (default claude on the PATH).",
        ),
        (
            "PRODIGY_LOG",
            "Diagnostic logging on stderr, a tracing filter (-v gives debug).",
        ),
        (
            "PRODIGY_S3_CONNECT_TIMEOUT",
            "How long a connection to a remote store may take (default 5s).",
        ),
        (
            "AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY",
            "How a remote store is reached.",
        ),
    ] {
        out.push_str(&format!(".TP\n\\fB{}\\fR\n{}\n", roff(name), roff(what)));
    }
    out.push_str(".SH FILES\n");
    for (path, what) in [
        (
            "~/.prodigy/objects/",
            "The objects: zstd frames named by their BLAKE3 hash, and packs.",
        ),
        (
            "~/.prodigy/events/, dlq/, state/, archive/",
            "The refs, one directory per repository and job: HEAD, reflog, lock.",
        ),
        (
            "~/.prodigy/worktrees/REPO/JOB/",
            "A job's worktrees and its local step logs.",
        ),
        (
            "~/.prodigy/config.json",
            "Retention policies, gc settings, a remote store.",
        ),
        (
            "~/.prodigy/repos/REPO.json",
            "Which repository a repo name stands for.",
        ),
    ] {
        out.push_str(&format!(".TP\n\\fB{}\\fR\n{}\n", roff(path), roff(what)));
    }
    out
}
