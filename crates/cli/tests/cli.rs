//! The `kurir` binary itself: what it says without any service to talk to.
//! (Its commands against Postgres and RabbitMQ are exercised by the
//! end-to-end tests in tests/, which run this same binary.)
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn kurir(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kurir"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn version_prints_the_crate_version() {
    let out = kurir(&["--version"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "{stdout}");
}

#[test]
fn dlq_replay_without_ids_or_all_is_a_usage_error() {
    // Nothing listens on port 1: the check must come before any connection.
    let out = kurir(&[
        "dlq",
        "--amqp-url",
        "amqp://guest:guest@127.0.0.1:1/%2f",
        "replay",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--all or the ids"), "{stderr}");
}
