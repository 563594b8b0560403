//! `promtool check metrics` on an exposition, so tests prove Prometheus accepts what they serve.

use std::io::Write;
use std::process::{Command, Stdio};

/// Runs `promtool check metrics` on `text` (Prometheus or OpenMetrics exposition) and panics with
/// its findings when it objects. Without promtool installed the check is skipped with a note,
/// unless `MAINSTAY_REQUIRE_PROMTOOL` is set (as `.ci/run` sets it), when that is a failure.
///
/// # Panics
///
/// When promtool rejects `text`, or is missing where it is required.
pub fn check_metrics(text: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            assert!(
                std::env::var_os("MAINSTAY_REQUIRE_PROMTOOL").is_none(),
                "promtool is required here: {e}"
            );
            eprintln!("promtool not installed: skipping its check (apt-get install prometheus)");
            return;
        }
    };
    child
        .stdin
        .take()
        .expect("promtool's standard input")
        .write_all(text.as_bytes())
        .expect("promtool reads its input");
    let output = child.wait_with_output().expect("promtool finishes");
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\n--- input ---\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}
