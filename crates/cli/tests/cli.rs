//! The `kurir` binary itself: what it says when a setting is wrong, without
//! any service to talk to (nothing listens on port 1). Its commands against
//! Postgres and RabbitMQ are exercised by the end-to-end tests in tests/,
//! which run this same binary.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

/// Runs kurir with only `env` of kurir's settings set.
fn kurir(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kurir"));
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("KURIR_") || key == "DATABASE_URL" || key == "AMQP_URL" {
            command.env_remove(key);
        }
    }
    // Nothing listens on port 1: no test depends on a service being up or down.
    command
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/kurir")
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .env("KURIR_API_ADDR", "127.0.0.1:0")
        .env("KURIR_WORKER_METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "error")
        .envs(env.iter().copied());
    command.output().unwrap()
}

/// Exit code 2 and exactly one line on stderr; that line.
fn one_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {stderr}");
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    lines[0].to_owned()
}

#[test]
fn version_prints_the_crate_version() {
    let out = kurir(&["--version"], &[]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "{stdout}");
}

#[test]
fn an_amqp_url_that_is_not_one_is_refused_at_start() {
    let line = one_line(&kurir(&["api"], &[("AMQP_URL", "nonsense")]));
    assert!(
        line.starts_with("error: AMQP_URL=\"nonsense\" is not valid"),
        "{line}"
    );
    assert!(line.contains("amqp://"), "{line}");
}

#[test]
fn a_fixed_list_setting_says_its_valid_values() {
    let line = one_line(&kurir(&["worker"], &[("KURIR_PROVIDER", "sms")]));
    assert_eq!(
        line,
        r#"error: KURIR_PROVIDER="sms" is not valid; use one of: log, whatsapp, webhook"#
    );
    let line = one_line(&kurir(&["api"], &[("KURIR_LOG_FORMAT", "yaml")]));
    assert_eq!(
        line,
        r#"error: KURIR_LOG_FORMAT="yaml" is not valid; use one of: text, json"#
    );
}

#[test]
fn a_database_url_of_another_database_is_one_line_and_exit_2_everywhere() {
    for command in ["api", "worker", "migrate", "dev"] {
        let line = one_line(&kurir(&[command], &[("DATABASE_URL", "mysql://x@y/z")]));
        assert!(
            line.starts_with("error: DATABASE_URL=\"mysql://x@y/z\""),
            "{command}: {line}"
        );
        assert!(line.contains("postgres://"), "{command}: {line}");
    }
}

#[test]
fn a_second_worker_on_a_taken_metrics_address_exits_2_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let line = one_line(&kurir(&["worker"], &[("KURIR_WORKER_METRICS_ADDR", &addr)]));
    assert!(
        line.contains(&format!("KURIR_WORKER_METRICS_ADDR={addr}")),
        "{line}"
    );
    assert!(line.contains("its own address, or port 0"), "{line}");
}

#[test]
fn an_unreachable_postgres_is_named_with_its_cause() {
    let out = kurir(
        &[
            "keys",
            "list",
            "--database-url",
            "postgres://postgres@127.0.0.1:1/kurir",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn global_settings_show_in_subcommand_help() {
    let out = kurir(&["keys", "list", "--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--database-url"), "{help}");
}

#[test]
fn dlq_replay_without_ids_or_all_is_a_usage_error() {
    let line = one_line(&kurir(&["dlq", "replay"], &[]));
    assert!(line.contains("--all or the ids"), "{line}");
}

/// `.env.example` says its values are the defaults: every setting the api
/// and the worker take is in it, with the default `--help` shows.
#[test]
fn env_example_names_every_setting_with_its_default() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.env.example");
    let example = std::fs::read_to_string(path).unwrap();
    // `KEY=value` gives a value; `# KEY=` only names the setting.
    let mut listed = std::collections::HashMap::new();
    for line in example.lines() {
        let (line, commented) = match line.strip_prefix("# ") {
            Some(rest) => (rest, true),
            None => (line, false),
        };
        if let Some((key, value)) = line.split_once('=')
            && !key.is_empty()
            && key.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        {
            listed.insert(key.to_owned(), (!commented).then(|| value.to_owned()));
        }
    }
    let mut wrong = Vec::new();
    let mut seen = 0;
    for command in ["api", "worker"] {
        let out = kurir(&[command, "--help"], &[]);
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        // One block per option: from a line starting with `-` to the next.
        let mut options: Vec<String> = Vec::new();
        for line in help.lines() {
            if line.trim_start().starts_with('-') {
                options.push(String::new());
            }
            if let Some(option) = options.last_mut() {
                option.push_str(line);
                option.push('\n');
            }
        }
        for option in &options {
            let Some(key) = option
                .split("[env: ")
                .nth(1)
                .and_then(|rest| rest.split(['=', ']']).next())
            else {
                continue;
            };
            let default = option
                .split("[default: ")
                .nth(1)
                .and_then(|rest| rest.split(']').next());
            seen += 1;
            match (listed.get(key), default) {
                (None, _) => wrong.push(format!("{key} is missing")),
                (Some(Some(value)), Some(default)) if value != default => {
                    wrong.push(format!("{key}={value}, but its default is {default}"));
                }
                _ => {}
            }
        }
    }
    assert!(seen > 20, "only {seen} settings found in --help");
    wrong.sort();
    wrong.dedup();
    assert!(wrong.is_empty(), ".env.example: {wrong:#?}");
}

/// A worker's settings are checked (its provider built) before it connects
/// or listens: the one line is the error, with nothing logged before it.
#[test]
fn a_worker_without_its_whatsapp_token_says_only_that() {
    for command in ["worker", "dev"] {
        let out = kurir(
            &[command],
            &[
                ("KURIR_PROVIDER", "whatsapp"),
                ("KURIR_WHATSAPP_PHONE_NUMBER_ID", "1234567890"),
                ("RUST_LOG", "info"),
            ],
        );
        let line = one_line(&out);
        assert!(line.starts_with("error: "), "{command}: {line}");
        assert!(line.contains("KURIR_WHATSAPP_TOKEN"), "{command}: {line}");
    }
}

/// Every command's `--help` is the compact one: one entry per option, no
/// blank line between them (clap switches every option to its long form,
/// `[env: …]` and `[default: …]` on lines of their own, as soon as one
/// option or value has a long description; those live in
/// docs/configuration.md).
#[test]
fn every_help_is_in_the_compact_form() {
    let commands: &[&[&str]] = &[
        &[],
        &["migrate"],
        &["api"],
        &["worker"],
        &["dev"],
        &["keys"],
        &["keys", "create"],
        &["keys", "list"],
        &["keys", "revoke"],
        &["accounts", "list"],
        &["accounts", "limit"],
        &["users", "import"],
        &["stats"],
        &["dlq", "list"],
        &["dlq", "replay"],
    ];
    for command in commands {
        let mut args = command.to_vec();
        args.push("--help");
        let out = kurir(&args, &[]);
        assert!(out.status.success(), "{command:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            !help.contains("see a summary with '-h'"),
            "{command:?}: {help}"
        );
        let options = help.split("Options:").nth(1).unwrap_or("");
        assert!(
            options.trim().lines().all(|line| !line.trim().is_empty()),
            "{command:?}: a blank line between options: {help}"
        );
    }
}

/// `kurir dev` runs an API and a worker: it takes every setting of both.
#[test]
fn dev_takes_every_setting_of_the_api_and_the_worker() {
    let flags = |command: &str| -> std::collections::BTreeSet<String> {
        let out = kurir(&[command, "--help"], &[]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter(|word| word.starts_with("--"))
            .map(str::to_owned)
            .collect()
    };
    let dev = flags("dev");
    let missing: Vec<String> = flags("api")
        .union(&flags("worker"))
        .filter(|flag| !dev.contains(*flag))
        .cloned()
        .collect();
    assert!(missing.is_empty(), "kurir dev --help lacks {missing:?}");
}

/// The shared settings (Postgres, RabbitMQ, the queue prefix) go before the
/// command's name as well as after it, and mean the same there.
#[test]
fn shared_settings_work_before_the_command_too() {
    // The flag, not DATABASE_URL (a socket directory that does not exist),
    // reaches `keys list`: Postgres refuses on port 1.
    let unix_socket = [("DATABASE_URL", "host=/nonexistent-kurir-dir dbname=kurir")];
    let refused = "postgres://postgres@127.0.0.1:1/kurir";
    for args in [
        &["--database-url", refused, "keys", "list"][..],
        &["keys", "list", "--database-url", refused][..],
    ] {
        let out = kurir(args, &unix_socket);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("Connection refused"), "{args:?}: {stderr}");
    }
    let line = one_line(&kurir(
        &["--database-url", "mysql://x@y/z", "keys", "list"],
        &[],
    ));
    assert!(
        line.starts_with(r#"error: --database-url="mysql://x@y/z" is not valid"#),
        "{line}"
    );
    let line = one_line(&kurir(&["--queue-prefix", "a b", "stats"], &[]));
    assert!(
        line.starts_with(r#"error: --queue-prefix="a b" is not valid"#),
        "{line}"
    );
    // A command that does not read a setting does not list it.
    let out = kurir(&["keys", "list", "--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(!help.contains("--amqp-url"), "{help}");
}

/// `KURIR_DATABASE_URL` and `KURIR_AMQP_URL` are not read (the settings are
/// `DATABASE_URL` and `AMQP_URL`): set alone, kurir says so instead of
/// quietly using the default database or broker.
#[test]
fn a_kurir_prefixed_database_url_is_refused_naming_the_one_to_set() {
    let out = {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kurir"));
        for (key, _) in std::env::vars() {
            if key.starts_with("KURIR_") || key == "DATABASE_URL" {
                command.env_remove(key);
            }
        }
        command
            .args(["keys", "list"])
            .env(
                "KURIR_DATABASE_URL",
                "postgres://postgres@127.0.0.1:1/kurir",
            )
            .env("RUST_LOG", "error");
        command.output().unwrap()
    };
    let line = one_line(&out);
    assert!(line.contains("KURIR_DATABASE_URL"), "{line}");
    assert!(line.contains("set DATABASE_URL instead"), "{line}");
    let line = one_line(&kurir(
        &["worker"],
        &[("KURIR_AMQP_URL", "amqp://guest:guest@127.0.0.1:2/%2f")],
    ));
    assert!(line.contains("differs from AMQP_URL"), "{line}");
}
