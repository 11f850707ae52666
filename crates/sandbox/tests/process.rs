//! The `kurir-sandbox` binary itself, as a log collector or a redirect sees it.
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

/// Logged to a pipe (not a terminal), its lines carry no ANSI colour codes.
#[test]
fn a_redirected_log_has_no_colour_codes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kurir-sandbox"))
        .env_clear()
        .env("KURIR_SANDBOX_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, seen) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut logged = Vec::new();
    while let Ok(line) = seen.recv_timeout(Duration::from_secs(20)) {
        let listening = line.contains("kurir-sandbox listening");
        logged.push(line);
        if listening {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(
        logged.iter().any(|l| l.contains("kurir-sandbox listening")),
        "no listening line on stderr: {logged:?} (stdout: {stdout:?})"
    );
    for line in logged.iter().map(String::as_str).chain(stdout.lines()) {
        assert!(!line.contains("\x1b["), "a colour code in {line:?}");
    }
}
