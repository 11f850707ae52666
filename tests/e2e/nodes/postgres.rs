//! [`PrivatePostgres`]: a Postgres cluster of its own (see the parent module).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use super::{
    COMMAND_LIMIT, KILL_LIMIT, PORT_ATTEMPTS, await_port_closed, chown_tree, free_port,
    kill_and_wait, node_dir, pids_of, remove_dir, run, run_async, servers, sweep_stale, tail,
    wait_port_closed, watchdog,
};

const POSTGRES_BOOT: Duration = Duration::from_secs(30);

/// A Postgres cluster of its own (PostgreSQL 15 on the machine, or the
/// version in the servers' root: see the parent module): trust
/// authentication for `postgres`, on 127.0.0.1 and a free port, its socket
/// in its own directory, and `fsync=off` (its data is thrown away).
pub struct PrivatePostgres {
    dir: PathBuf,
    data: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    /// Creates a cluster (initdb) and starts it; returns once it accepts
    /// connections.
    pub async fn start() -> Self {
        sweep_stale();
        let started = Instant::now();
        let (dir, _) = node_dir("pg");
        chown_tree(&dir, "postgres");
        watchdog(
            &dir,
            &format!(
                r#"{}runuser -u postgres -- {} -D "$KURIR_NODE_DIR/data" -m immediate -w -t 10 stop"#,
                servers().shell_prefix(),
                servers().pg_program("pg_ctl"),
            ),
        );
        let mut postgres = Self {
            data: dir.join("data"),
            dir,
            port: free_port(),
        };
        let mut initdb = as_postgres("initdb");
        initdb
            .arg("-D")
            .arg(servers().inside(&postgres.data))
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8"])
            .args(["--locale=C.UTF-8", "--no-sync", "--no-instructions"]);
        if let Err(why) = run_async("initdb", initdb, COMMAND_LIMIT).await {
            panic!("cannot create a private Postgres cluster: {why}");
        }
        let mut clashes = Vec::new();
        for attempt in 1..=PORT_ATTEMPTS {
            match postgres.pg_ctl("start").await {
                Ok(()) => break,
                Err(why) if why.contains("already in use") && attempt < PORT_ATTEMPTS => {
                    clashes.push(why);
                    postgres.port = free_port();
                }
                Err(why) => panic!("cannot start a private Postgres: {why}"),
            }
        }
        postgres.await_ready(started).await;
        tracing::info!(
            port = postgres.port,
            "private Postgres booted in {:.1?}",
            started.elapsed()
        );
        postgres
    }

    /// `postgres://postgres@127.0.0.1:<port>/<dbname>`
    pub fn database_url(&self, dbname: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Fast shutdown: sessions are ended, new connections refused.
    pub async fn stop(&self) {
        let started = Instant::now();
        self.pg_ctl_or_panic("stop").await;
        await_port_closed(self.port, "the private Postgres").await;
        tracing::info!(
            port = self.port,
            "private Postgres stopped in {:.1?}",
            started.elapsed()
        );
    }

    /// Starts the stopped cluster again, on the same port with the same data.
    pub async fn start_again(&self) {
        let started = Instant::now();
        self.pg_ctl_or_panic("start").await;
        self.await_ready(started).await;
        tracing::info!(
            port = self.port,
            "private Postgres started in {:.1?}",
            started.elapsed()
        );
    }

    /// Fast shutdown then start, as one step.
    pub async fn restart(&self) {
        let started = Instant::now();
        self.pg_ctl_or_panic("restart").await;
        self.await_ready(started).await;
        tracing::info!(
            port = self.port,
            "private Postgres restarted in {:.1?}",
            started.elapsed()
        );
    }

    /// The server's options; passed on every start, since `pg_ctl start`
    /// without them would try the default port 5432 (the shared cluster's).
    fn options(&self) -> String {
        format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c shared_buffers=16MB -c max_connections=50",
            self.port,
            servers().inside(&self.dir).display()
        )
    }

    async fn pg_ctl(&self, action: &str) -> Result<(), String> {
        let mut pg_ctl = as_postgres("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(servers().inside(&self.data))
            .arg("-l")
            .arg(servers().inside(&self.dir.join("postgres.log")))
            .args(["-w", "-t", "30", "-m", "fast"]);
        if action != "stop" {
            pg_ctl.args(["-o", &self.options()]);
        }
        pg_ctl.arg(action);
        let what = format!("pg_ctl {action} (port {})", self.port);
        run_async(&what, pg_ctl, COMMAND_LIMIT)
            .await
            .map(drop)
            .map_err(|why| format!("{why}; the server log ends:\n{}", self.log_tail()))
    }

    async fn pg_ctl_or_panic(&self, action: &str) {
        if let Err(why) = self.pg_ctl(action).await {
            panic!("{why}");
        }
    }

    async fn await_ready(&self, since: Instant) {
        let url = self.database_url("postgres");
        let deadline = since + POSTGRES_BOOT;
        loop {
            let last = match postgres_probe(&url).await {
                Ok(()) => return,
                Err(err) => err,
            };
            assert!(
                Instant::now() < deadline,
                "the private Postgres on {} did not accept a connection within {POSTGRES_BOOT:?} \
                 (last error: {last}); its log ends:\n{}",
                self.port,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        tail(&self.dir.join("postgres.log"), 20)
    }
}

impl Drop for PrivatePostgres {
    /// Immediate shutdown (nothing is worth keeping), then the directory goes.
    fn drop(&mut self) {
        let started = Instant::now();
        stop_postgres(&self.data);
        if !wait_port_closed(self.port, KILL_LIMIT) {
            tracing::error!(
                port = self.port,
                "a stopped private Postgres's port stays open"
            );
        }
        remove_dir(&self.dir);
        tracing::info!(
            port = self.port,
            "private Postgres gone in {:.1?}",
            started.elapsed()
        );
    }
}

async fn postgres_probe(url: &str) -> Result<(), String> {
    let connect = tokio_postgres::connect(url, tokio_postgres::NoTls);
    let (client, connection) = match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(pair)) => pair,
        Ok(Err(err)) => return Err(err.to_string()),
        Err(_) => return Err("no answer within 5s".into()),
    };
    tokio::spawn(connection);
    client
        .simple_query("SELECT 1")
        .await
        .map(drop)
        .map_err(|err| err.to_string())
}

/// `pg_ctl stop -m immediate`, then SIGKILL for a postmaster that is left.
pub(super) fn stop_postgres(data: &Path) {
    let inside = servers().inside(data);
    if data.join("postmaster.pid").exists() {
        let mut pg_ctl = as_postgres("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&inside)
            .args(["-m", "immediate", "-w", "-t", "10", "stop"]);
        let _ = run("pg_ctl stop -m immediate", pg_ctl, Duration::from_secs(15));
    }
    let postmaster = pids_of("postgres", &format!("-D {}", inside.display()));
    let left = kill_and_wait(&postmaster, KILL_LIMIT);
    if !left.is_empty() {
        tracing::error!(?left, "private Postgres survived SIGKILL");
    }
}

/// PostgreSQL's `program` (`initdb`, `pg_ctl`) as the `postgres` user.
fn as_postgres(program: &str) -> Command {
    servers().as_user("postgres", &servers().pg_program(program))
}

#[cfg(test)]
mod tests {
    use super::PrivatePostgres;
    use crate::nodes::port_open;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs rabbitmq-server, PostgreSQL 15 and root: cargo test -- --include-ignored"]
    async fn a_private_postgres_stops_and_starts_and_is_gone_after_drop() {
        crate::support::init_logs();
        let postgres = PrivatePostgres::start().await;
        let url = postgres.database_url("postgres");
        let connect = || async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            Ok::<_, tokio_postgres::Error>(client)
        };
        let client = connect().await.expect("the private Postgres accepts");
        client
            .batch_execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
            .await
            .expect("write to the private Postgres");
        assert_ne!(postgres.port(), 5432);

        postgres.stop().await;
        assert!(
            connect().await.is_err(),
            "a stopped Postgres refuses connections"
        );
        assert!(
            client.simple_query("SELECT 1").await.is_err(),
            "stop ends open sessions"
        );

        postgres.start_again().await;
        let client = connect().await.expect("Postgres accepts after start_again");
        let row = client
            .query_one("SELECT n FROM kept", &[])
            .await
            .expect("the data survived the stop");
        assert_eq!(row.get::<_, i32>(0), 7);

        postgres.restart().await;
        assert!(
            client.simple_query("SELECT 1").await.is_err(),
            "restart ends sessions"
        );
        let client = connect().await.expect("Postgres accepts after restart");
        client
            .simple_query("SELECT 1")
            .await
            .expect("a query after restart");

        let (port, dir) = (postgres.port(), postgres.dir().to_owned());
        drop(postgres);
        assert!(!port_open(port), "the cluster's port is closed after Drop");
        assert!(!dir.exists(), "the cluster's directory is removed by Drop");
    }
}
