//! A kurir stack of its own: a fresh database, queue prefix, sandbox, api and
//! workers, started from binaries, and everything removed again at the end.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tokio::process::{Child, Command};

pub const SANDBOX_TOKEN: &str = "bench-sandbox-token";
/// The Meta app secret the sandbox signs receipts with (`--receipts`).
const APP_SECRET: &str = "bench-app-secret";
const STOP_GRACE: Duration = Duration::from_secs(5);
const READY_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug)]
pub struct ChildProc {
    pub name: String,
    pub child: Child,
    pub pid: u32,
    pub log: PathBuf,
}

#[derive(Debug)]
pub struct Stack {
    pub bin_dir: PathBuf,
    pub logs: PathBuf,
    pub base_url: String,
    pub database: String,
    pub database_url: String,
    pub amqp_url: String,
    pub prefix: String,
    pub database_created: bool,
    pub children: Vec<ChildProc>,
    pub api_url: String,
    pub key: String,
}

/// `base` with its database name replaced by `db`.
pub fn with_database(base: &str, db: &str) -> Result<String> {
    let mut url = url::Url::parse(base).with_context(|| format!("--database-url {base:?}"))?;
    url.set_path(&format!("/{db}"));
    Ok(url.to_string())
}

pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Stack {
    pub fn new(bin_dir: PathBuf, base_url: &str, amqp_url: &str) -> Result<Self> {
        for bin in ["kurir", "kurir-sandbox"] {
            let path = bin_dir.join(bin);
            if !path.is_file() {
                bail!(
                    "{} not found: build it (cargo build --release) or pass --bin-dir",
                    path.display()
                );
            }
        }
        let tag: String = {
            use rand::Rng;
            let mut rng = rand::rng();
            (0..8)
                .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
                .collect()
        };
        let database = format!("kurir_bench_{tag}");
        let logs = std::env::temp_dir().join(format!("kurir-bench-{tag}"));
        std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
        Ok(Self {
            bin_dir,
            database_url: with_database(base_url, &database)?,
            base_url: base_url.to_owned(),
            prefix: database.clone(),
            database,
            logs,
            amqp_url: amqp_url.to_owned(),
            database_created: false,
            children: Vec::new(),
            api_url: String::new(),
            key: String::new(),
        })
    }

    /// A command for one of our binaries with a clean kurir environment:
    /// nothing `KURIR_*` leaks in from the caller's shell.
    fn command(&self, bin: &str, log_name: &str) -> Result<(Command, PathBuf)> {
        let mut cmd = Command::new(self.bin_dir.join(bin));
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("KURIR_") || key == "DATABASE_URL" || key == "AMQP_URL" {
                cmd.env_remove(key.as_ref());
            }
        }
        cmd.env("DATABASE_URL", &self.database_url)
            .env("AMQP_URL", &self.amqp_url)
            .env("KURIR_QUEUE_PREFIX", &self.prefix)
            .stdin(Stdio::null());
        let log = self.logs.join(format!("{log_name}.log"));
        Ok((cmd, log))
    }

    /// Runs a one-off command; returns its stdout, logs its stderr.
    async fn run_once(&self, log_name: &str, args: &[&str]) -> Result<String> {
        let (mut cmd, log) = self.command("kurir", log_name)?;
        let file = std::fs::File::create(&log)?;
        let out = cmd
            .args(args)
            .stdout(Stdio::piped())
            .stderr(file)
            .output()
            .await
            .with_context(|| format!("running kurir {}", args.join(" ")))?;
        if !out.status.success() {
            let err = std::fs::read_to_string(&log).unwrap_or_default();
            bail!(
                "kurir {} failed ({}): {}",
                args.join(" "),
                out.status,
                err.trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn spawn(
        &mut self,
        bin: &str,
        name: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> Result<()> {
        let (mut cmd, log) = self.command(bin, name)?;
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        cmd.args(args).stdout(out).stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Its own process group: a Ctrl-C in the terminal reaches only us,
        // and we stop the children in order.
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin_dir.join(bin).display()))?;
        let pid = child.id().ok_or_else(|| anyhow!("{name} exited at once"))?;
        self.children.push(ChildProc {
            name: name.to_owned(),
            child,
            pid,
            log,
        });
        Ok(())
    }

    /// `worker_concurrency`: `KURIR_WORKER_CONCURRENCY` for each worker;
    /// `None` leaves kurir's default. `api_env`: more settings of the api.
    pub async fn start(
        &mut self,
        workers: usize,
        provider_latency_ms: u64,
        worker_concurrency: Option<u16>,
        api_env: &[(&str, String)],
        receipts: bool,
    ) -> Result<()> {
        self.database_created = true; // from here on, cleanup drops it (IF EXISTS)
        self.run_once("migrate", &["migrate"]).await?;
        self.key = self
            .run_once("keys", &["keys", "create", "--account", "bench"])
            .await?;
        if self.key.is_empty() || self.key.contains(char::is_whitespace) {
            bail!("kurir keys create printed {:?}, not a key", self.key);
        }

        let sandbox_port = free_port()?;
        let api_port = free_port()?;
        self.api_url = format!("http://127.0.0.1:{api_port}");
        let mut sandbox_env = vec![
            ("KURIR_SANDBOX_ADDR", format!("127.0.0.1:{sandbox_port}")),
            ("KURIR_SANDBOX_LATENCY_MS", provider_latency_ms.to_string()),
            ("KURIR_SANDBOX_TOKEN", SANDBOX_TOKEN.to_owned()),
        ];
        let mut api_env = api_env.to_vec();
        api_env.push(("KURIR_API_ADDR", format!("127.0.0.1:{api_port}")));
        if receipts {
            sandbox_env.extend([
                (
                    "KURIR_SANDBOX_RECEIPTS_URL",
                    format!("{}/v1/webhooks/whatsapp", self.api_url),
                ),
                ("KURIR_SANDBOX_APP_SECRET", APP_SECRET.to_owned()),
            ]);
            api_env.push(("KURIR_WHATSAPP_APP_SECRET", APP_SECRET.to_owned()));
        }
        self.spawn("kurir-sandbox", "sandbox", &[], &sandbox_env)?;
        self.spawn("kurir", "api", &["api"], &api_env)?;
        let mut worker_env = vec![
            ("KURIR_PROVIDER", "whatsapp".to_owned()),
            (
                "KURIR_WHATSAPP_BASE_URL",
                format!("http://127.0.0.1:{sandbox_port}/v25.0"),
            ),
            ("KURIR_WHATSAPP_TOKEN", SANDBOX_TOKEN.to_owned()),
            ("KURIR_WHATSAPP_PHONE_NUMBER_ID", "1234567890".to_owned()),
            ("KURIR_WORKER_METRICS_ADDR", "127.0.0.1:0".to_owned()),
            ("KURIR_LOG_FORMAT", "json".to_owned()),
        ];
        if let Some(c) = worker_concurrency {
            worker_env.push(("KURIR_WORKER_CONCURRENCY", c.to_string()));
        }
        for i in 1..=workers {
            self.spawn("kurir", &format!("worker-{i}"), &["worker"], &worker_env)?;
        }

        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        self.wait_ready(
            &http,
            "sandbox",
            &format!("http://127.0.0.1:{sandbox_port}/__sandbox/messages"),
            deadline,
        )
        .await?;
        self.wait_ready(&http, "api", &format!("{}/readyz", self.api_url), deadline)
            .await?;
        for i in 1..=workers {
            let name = format!("worker-{i}");
            let addr = self.worker_addr(&name, deadline).await?;
            self.wait_ready(&http, &name, &format!("http://{addr}/readyz"), deadline)
                .await?;
        }
        Ok(())
    }

    /// The worker logs (JSON) the address its health endpoints bound to.
    async fn worker_addr(&mut self, name: &str, deadline: Instant) -> Result<String> {
        let log = self.log_of(name)?;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            for line in text.lines() {
                if !line.contains("worker health endpoints listening") {
                    continue;
                }
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                    let addr = v.pointer("/fields/addr").or_else(|| v.get("addr"));
                    if let Some(addr) = addr.and_then(|a| a.as_str()) {
                        return Ok(addr.to_owned());
                    }
                }
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{name} did not log its health address; see {}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_of(&self, name: &str) -> Result<PathBuf> {
        self.children
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.log.clone())
            .ok_or_else(|| anyhow!("no child {name}"))
    }

    async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        name: &str,
        url: &str,
        deadline: Instant,
    ) -> Result<()> {
        loop {
            if let Ok(resp) = http.get(url).send().await
                && resp.status().is_success()
            {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{name} not ready at {url} within {READY_TIMEOUT:?}; see {}",
                    self.log_of(name)
                        .map(|l| l.display().to_string())
                        .unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An error naming the first child that has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        for c in &mut self.children {
            if let Some(status) = c.child.try_wait()? {
                bail!("{} exited ({status}); see {}", c.name, c.log.display());
            }
        }
        Ok(())
    }

    /// Resolves (with an error) when a child exits; never resolves otherwise.
    pub async fn watch(&mut self) -> anyhow::Error {
        loop {
            if let Err(e) = self.check_alive() {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub fn pids(&self, prefix: &str) -> Vec<(String, u32)> {
        self.children
            .iter()
            .filter(|c| c.name.starts_with(prefix))
            .map(|c| (c.name.clone(), c.pid))
            .collect()
    }

    /// SIGTERM to every child, SIGKILL to those still running after a few seconds.
    pub async fn stop_children(&mut self) {
        for c in &self.children {
            if c.child.id().is_some() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &c.pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        for c in &mut self.children {
            match tokio::time::timeout_at(deadline, c.child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    eprintln!("{} did not stop within {STOP_GRACE:?}: SIGKILL", c.name);
                    let _ = c.child.start_kill();
                    let _ = c.child.wait().await;
                }
            }
        }
        self.children.clear();
    }

    /// Stops everything, drops the database, deletes the queues.
    pub async fn cleanup(&mut self, extra_queues: &[String]) {
        self.stop_children().await;
        if self.database_created {
            match drop_database(&self.base_url, &self.database).await {
                Ok(()) => self.database_created = false,
                Err(e) => eprintln!("warning: could not drop database {}: {e:#}", self.database),
            }
        }
        if let Err(e) = delete_queues(&self.amqp_url, &self.prefix, extra_queues).await {
            eprintln!(
                "warning: could not delete queues under {}: {e:#}",
                self.prefix
            );
        }
    }
}

/// Drops database `name` and deletes the queues under prefix `name`, and
/// `extra_queues` (the reference pipeline's, which this module does not name).
pub async fn clean(
    base_url: &str,
    amqp_url: &str,
    name: &str,
    extra_queues: &[String],
) -> Result<()> {
    drop_database(base_url, name).await?;
    delete_queues(amqp_url, name, extra_queues).await
}

pub async fn connect_db(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

async fn drop_database(base: &str, db: &str) -> Result<()> {
    let client = connect_db(&with_database(base, "postgres")?).await?;
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
        .await?;
    Ok(())
}

async fn delete_queues(amqp_url: &str, prefix: &str, extra: &[String]) -> Result<()> {
    use lapin::options::QueueDeleteOptions;
    let work = async {
        let conn =
            lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        kurir_bus::Topology::new(prefix).delete(&channel).await?;
        for q in extra {
            channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        let _ = conn.close(200, "bench done".to_owned().into()).await;
        Ok::<_, lapin::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| anyhow!("timed out"))??;
    Ok(())
}

pub fn default_bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_gets_the_bench_database() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/", "kurir_bench_1").unwrap(),
            "postgres://postgres@127.0.0.1:5432/kurir_bench_1"
        );
        assert_eq!(
            with_database("postgres://u:p@h:1/kurir?sslmode=disable", "x").unwrap(),
            "postgres://u:p@h:1/x?sslmode=disable"
        );
    }
}
