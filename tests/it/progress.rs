//! Long work shows a progress bar on a terminal (a real pseudo-terminal, from `script`)
//! and nothing with `-q`, `--json` or off a terminal.

use std::process::Command;

use crate::common::{Env, need_tool};

/// Runs `prodigy args…` for `env` on a pseudo-terminal; everything it drew.
fn on_terminal(env: &Env, args: &[&str]) -> String {
    need_tool("script", "bsdutils");
    let exe = assert_cmd::cargo::cargo_bin("prodigy");
    let line = std::iter::once(exe.display().to_string())
        .chain(args.iter().map(|a| (*a).to_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let std = env.std_cmd();
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"]).env_clear();
    for (k, v) in std.get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.env("TERM", "xterm").current_dir(env.scratch());
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn export_and_gc_draw_a_bar_on_a_terminal_only() {
    let env = Env::new();
    let events: String = (0..5000)
        .map(|i| format!("{{\"event_type\":\"agent_completed\",\"agent_id\":\"a\",\"item_id\":\"i{i}\",\"duration_ms\":1}}\n"))
        .collect();
    env.ok(
        &["events", "append", "--repo", "r", "--job", "j"],
        events.as_bytes(),
    );
    let out = env.scratch().join("out.jsonl");
    let out = out.to_str().unwrap();

    let drawn = on_terminal(&env, &["events", "export", "j", "--repo", "r", "-o", out]);
    assert!(drawn.contains("exporting events"), "{drawn:?}");
    assert!(drawn.contains("/5000"), "{drawn:?}");
    let drawn = on_terminal(&env, &["gc", "--prune", "now"]);
    assert!(drawn.contains("scanning"), "{drawn:?}");

    // Quiet with -q and --json, and off a terminal.
    let quiet = on_terminal(
        &env,
        &["-q", "events", "export", "j", "--repo", "r", "-o", out],
    );
    assert!(!quiet.contains("exporting"), "{quiet:?}");
    let json = on_terminal(&env, &["gc", "--prune", "now", "--json"]);
    assert!(!json.contains("scanning"), "{json:?}");
    let piped = env.run(&["events", "export", "j", "--repo", "r", "-o", out], b"");
    assert!(piped.status.success());
    assert!(
        piped.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
}
