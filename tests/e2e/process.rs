//! Real `kurir` processes, for what only a process can show: a worker killed
//! with SIGKILL, an operator command's output and exit code.

use std::{
    path::PathBuf,
    process::{Output, Stdio},
    time::Duration,
};

use tokio::process::{Child, Command};

/// `target/<profile>/kurir`, built if it is missing or older than this test
/// binary (so `cargo test -p kurir-tests` alone never runs a stale one).
pub fn kurir_binary() -> PathBuf {
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            let me = std::env::current_exe().expect("the test binary's path");
            // target/<profile>/deps/e2e-… → target/<profile>/kurir
            let profile_dir = me
                .parent()
                .and_then(|deps| deps.parent())
                .expect("target/<profile>")
                .to_path_buf();
            let binary = profile_dir.join("kurir");
            let modified = |path: &PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
            let fresh = matches!((modified(&binary), modified(&me)), (Some(bin), Some(test)) if bin >= test);
            if !fresh {
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let mut build = std::process::Command::new(cargo);
                build.args(["build", "-p", "kurir-cli", "--bin", "kurir"]);
                if profile_dir.file_name().is_some_and(|name| name == "release") {
                    build.arg("--release");
                }
                let status = build
                    .current_dir(env!("CARGO_MANIFEST_DIR"))
                    .status()
                    .expect("run cargo build for the kurir binary");
                assert!(status.success(), "cannot build the kurir binary");
            }
            assert!(
                binary.exists(),
                "{} is missing: run `cargo build -p kurir-cli`",
                binary.display()
            );
            binary
        })
        .clone()
}

/// A `kurir` command with `env` (and nothing of this process's KURIR_ settings).
pub fn kurir(args: &[&str], env: &[(String, String)]) -> Command {
    let mut command = Command::new(kurir_binary());
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("KURIR_") || key == "DATABASE_URL" || key == "AMQP_URL" {
            command.env_remove(key);
        }
    }
    command.env("RUST_LOG", "warn,lapin=off");
    command.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    command.kill_on_drop(true);
    command
}

/// Runs a `kurir` command to its end (within 60 s).
pub async fn run_kurir(args: &[&str], env: &[(String, String)]) -> Output {
    let mut command = kurir(args, env);
    command.stdin(Stdio::null());
    tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("kurir {args:?} did not finish within 60s"))
        .expect("run kurir")
}

/// A long-running `kurir` process, killed when dropped.
pub struct KurirProcess {
    child: Child,
}

impl KurirProcess {
    pub fn spawn(args: &[&str], env: &[(String, String)]) -> Self {
        let mut command = kurir(args, env);
        command.stdin(Stdio::null()).stdout(Stdio::null());
        let child = command.spawn().expect("start kurir");
        Self { child }
    }

    /// SIGKILL: the process gets no chance to settle anything.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill -9 kurir");
    }
}
