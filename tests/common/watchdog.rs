//! Clean-up that runs once this test process has gone, however it ended
//! (servers kept in statics are never dropped; a panic or a kill skips drops).

use std::ffi::OsStr;
use std::process::{Command, Stdio};

/// How long a watchdog waits at most, in half seconds (8 hours): a bound in
/// case this process's ID is reused by a long-lived process.
const MAX_POLLS: u32 = 8 * 3600 * 2;

/// Runs the shell code `action`, with `args` as its `$1`, `$2`…, once this
/// process has exited. The watchdog runs in the background of a shell that
/// exits at once, so it is not a child of ours (no zombie, nothing to wait
/// for) and outlives this process. `name` is its `$0`, as `ps` shows it.
///
/// # Panics
/// When the shell cannot be started.
pub fn after_exit(name: &str, action: &str, args: &[&OsStr]) {
    let script = format!(
        r#"(
            i=0
            while kill -0 "$1" 2>/dev/null && [ "$i" -lt "$2" ]; do
                sleep 0.5
                i=$((i + 1))
            done
            shift 2
            {action}
        ) </dev/null >/dev/null 2>&1 &"#
    );
    let status = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(name)
        .arg(std::process::id().to_string())
        .arg(MAX_POLLS.to_string())
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("could not spawn the {name} watchdog: {e}"));
    assert!(status.success(), "the {name} watchdog failed to start");
}
