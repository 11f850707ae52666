//! A private RabbitMQ node and a private Postgres cluster that a test may
//! really stop and restart, without touching the machine's shared services
//! (Postgres on 5432, RabbitMQ `rabbit@localhost` on 5672).
//!
//! Each instance lives in a directory of its own under [`BASE`], named after
//! the test process that owns it (`rmq-<pid>-<id>`, `pg-<pid>-<id>`), on
//! ports picked free at start. Dropping it stops the server and removes the
//! directory, also when the test panicked. Should the test process die
//! without unwinding (SIGKILL, Ctrl-C), a watchdog started with each instance
//! stops the server within a second or so, and the next `start()` in any
//! test process sweeps directories whose owner is gone.
//!
//! Tests run as root; the servers run as the `rabbitmq` and `postgres` users.

use std::{
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::{
        fs::{PermissionsExt, chown},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Once,
    time::{Duration, Instant},
};

/// Where private nodes keep their data, logs and sockets.
pub const BASE: &str = "/tmp/kurir-test-nodes";
/// The packaged wrappers: run as root, they drop to the `rabbitmq` user (via
/// `su`, which keeps the environment) and so use its Erlang cookie.
const RABBITMQ_SERVER: &str = "/usr/sbin/rabbitmq-server";
const RABBITMQCTL: &str = "/usr/sbin/rabbitmqctl";
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A node boots in about 5 s on an idle machine; two cores shared with other
/// builds and tests can make that several times longer.
const BROKER_BOOT: Duration = Duration::from_secs(60);
const POSTGRES_BOOT: Duration = Duration::from_secs(30);
/// How long a server may take to close its port once told to stop.
const STOP_LIMIT: Duration = Duration::from_secs(20);
/// How long one `rabbitmqctl`, `pg_ctl` or `initdb` call may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(45);
/// How long Drop waits for a killed server to be gone.
const KILL_LIMIT: Duration = Duration::from_secs(10);
/// Attempts to boot when a port picked free was taken in the meantime.
const PORT_ATTEMPTS: usize = 3;

/// A RabbitMQ node of its own, on 127.0.0.1 and a free port, with `guest`
/// allowed (it connects over loopback) and no plugins.
pub struct PrivateBroker {
    node: String,
    dir: PathBuf,
    port: u16,
    dist_port: u16,
}

/// Why a boot failed: a port clash is worth another try on other ports.
enum BootError {
    PortTaken(String),
    Failed(String),
}

impl PrivateBroker {
    /// Boots a node and waits until it accepts an AMQP connection.
    pub async fn start() -> Self {
        sweep_stale();
        let mut clashes = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            let started = Instant::now();
            let broker = Self::prepare();
            match broker.boot().await {
                Ok(()) => {
                    tracing::info!(
                        node = %broker.node,
                        port = broker.port,
                        "private RabbitMQ node booted in {:.1?}",
                        started.elapsed()
                    );
                    return broker;
                }
                // Dropping `broker` kills what is left of it.
                Err(BootError::PortTaken(why)) => clashes.push(why),
                Err(BootError::Failed(why)) => panic!("{why}"),
            }
        }
        panic!(
            "a private RabbitMQ node found its ports taken {PORT_ATTEMPTS} times: {}",
            clashes.join("; ")
        )
    }

    /// The directory, files and ports of a node not yet started.
    fn prepare() -> Self {
        let (dir, id) = node_dir("rmq");
        let port = free_port();
        let dist_port = loop {
            let port2 = free_port();
            if port2 != port {
                break port2;
            }
        };
        let broker = Self {
            node: format!("kt_{id}@localhost"),
            dir,
            port,
            dist_port,
        };
        for sub in ["mnesia", "log", "conf.d"] {
            fs::create_dir(broker.dir.join(sub)).expect("create a node directory");
        }
        write(
            &broker.dir.join("rabbitmq.conf"),
            &format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
        );
        // No plugins (the management plugin alone would add a port and
        // seconds of boot), and none of /etc/rabbitmq's files.
        write(&broker.dir.join("enabled_plugins"), "[].\n");
        write(
            &broker.dir.join("rabbitmq-env.conf"),
            "# Empty: /etc/rabbitmq/rabbitmq-env.conf names the shared node.\n",
        );
        chown_tree(&broker.dir, "rabbitmq");
        watchdog(
            &broker.dir,
            // Give a booting node time to write its pid file, then kill the
            // VM that carries this node's marker.
            r#"n=0
while [ ! -s "$KURIR_DIR/pid" ] && [ $n -lt 30 ]; do sleep 1; n=$((n+1)); done
for p in /proc/[0-9]*; do
  case "$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)" in
    *beam.smp*"-kurir_test_node $KURIR_DIR"*) kill -KILL "${p#/proc/}" ;;
  esac
done
sleep 2"#,
        );
        broker
    }

    async fn boot(&self) -> Result<(), BootError> {
        let launched = Instant::now();
        let mut server = Command::new(RABBITMQ_SERVER);
        server.arg("-detached").envs(self.env());
        run_async("rabbitmq-server -detached", server, COMMAND_LIMIT)
            .await
            .map_err(BootError::Failed)?;
        self.await_amqp(launched, BROKER_BOOT).await
    }

    /// The environment that makes `rabbitmq-server` boot this node and
    /// nothing of the shared one.
    fn env(&self) -> Vec<(&'static str, String)> {
        let dir = |name: &str| self.dir.join(name).display().to_string();
        vec![
            ("RABBITMQ_NODENAME", self.node.clone()),
            ("RABBITMQ_MNESIA_BASE", dir("mnesia")),
            ("RABBITMQ_LOG_BASE", dir("log")),
            ("RABBITMQ_PID_FILE", dir("pid")),
            ("RABBITMQ_DIST_PORT", self.dist_port.to_string()),
            ("RABBITMQ_CONFIG_FILE", dir("rabbitmq.conf")),
            ("RABBITMQ_CONFIG_FILES", dir("conf.d")),
            ("RABBITMQ_ADVANCED_CONFIG_FILE", dir("advanced.config")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", dir("enabled_plugins")),
            ("RABBITMQ_CONF_ENV_FILE", dir("rabbitmq-env.conf")),
            // Distribution on loopback only, as the shared node does; the
            // marker lets Drop and the sweep find this node's VM by its
            // command line even before the pid file exists.
            (
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                format!(
                    "-kernel inet_dist_use_interface {{127,0,0,1}} -kurir_test_node {}",
                    self.dir.display()
                ),
            ),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
            // Not /var/lib/rabbitmq, the wrapper's working directory.
            ("ERL_CRASH_DUMP", dir("erl_crash.dump")),
        ]
    }

    /// Polls until a guest AMQP connection succeeds, failing early (with the
    /// node's log) if the node died.
    async fn await_amqp(&self, since: Instant, limit: Duration) -> Result<(), BootError> {
        let url = self.amqp_url();
        let deadline = since + limit;
        loop {
            let last = match amqp_probe(&url).await {
                Ok(()) => return Ok(()),
                Err(err) => err,
            };
            // The VM shows up right after `-detached` returns.
            if since.elapsed() > Duration::from_secs(3) && self.vm_pids().is_empty() {
                let log = self.log_tail();
                let why = format!(
                    "the private RabbitMQ node {} died while booting (last AMQP error: {last}); its log ends:\n{log}",
                    self.node
                );
                return Err(match log.contains("eaddrinuse") {
                    true => BootError::PortTaken(why),
                    false => BootError::Failed(why),
                });
            }
            if Instant::now() >= deadline {
                return Err(BootError::Failed(format!(
                    "the private RabbitMQ node {} did not accept AMQP on 127.0.0.1:{} within {limit:?} \
                     (last error: {last}); its log ends:\n{}",
                    self.node,
                    self.port,
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Erlang node name, for `rabbitmqctl -n`.
    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the RabbitMQ application (the VM keeps running): open
    /// connections are closed and new ones refused until [`Self::start_app`].
    pub async fn stop_app(&self) {
        let started = Instant::now();
        self.ctl("stop_app").await;
        await_port_closed(
            self.port,
            &format!("the private RabbitMQ node {}", self.node),
        )
        .await;
        tracing::info!(node = %self.node, "stop_app took {:.1?}", started.elapsed());
    }

    /// Starts the application again and waits until AMQP answers.
    pub async fn start_app(&self) {
        let started = Instant::now();
        self.ctl("start_app").await;
        if let Err(BootError::Failed(why) | BootError::PortTaken(why)) =
            self.await_amqp(started, BROKER_BOOT).await
        {
            panic!("after start_app: {why}");
        }
        tracing::info!(node = %self.node, "start_app took {:.1?}", started.elapsed());
    }

    async fn ctl(&self, command: &str) {
        let mut ctl = Command::new(RABBITMQCTL);
        ctl.args(["-n", &self.node, command]);
        let what = format!("rabbitmqctl -n {} {command}", self.node);
        if let Err(why) = run_async(&what, ctl, COMMAND_LIMIT).await {
            panic!("{why}; the node's log ends:\n{}", self.log_tail());
        }
    }

    fn vm_pids(&self) -> Vec<u32> {
        vm_pids(&self.dir)
    }

    fn log_tail(&self) -> String {
        tail(&self.dir.join("log").join(format!("{}.log", self.node)), 30)
    }
}

impl Drop for PrivateBroker {
    /// Kills the VM (its data is thrown away, so there is nothing to shut
    /// down gracefully) and removes the node's directory.
    fn drop(&mut self) {
        let started = Instant::now();
        let left = kill_and_wait(&self.vm_pids(), KILL_LIMIT);
        // The killed VM's sockets may outlive its pid here by a moment.
        if !wait_port_closed(self.port, KILL_LIMIT) {
            tracing::error!(node = %self.node, port = self.port, "a killed RabbitMQ node's port stays open");
        }
        remove_dir(&self.dir);
        if !left.is_empty() {
            tracing::error!(node = %self.node, ?left, "private RabbitMQ node survived SIGKILL");
        }
        tracing::info!(node = %self.node, "private RabbitMQ node gone in {:.1?}", started.elapsed());
    }
}

/// `Ok` if a guest AMQP connection to `url` opens (it is closed again).
async fn amqp_probe(url: &str) -> Result<(), String> {
    let connect = lapin::Connection::connect(url, lapin::ConnectionProperties::default());
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(connection)) => {
            let _ = connection.close(200, "probe".into()).await;
            Ok(())
        }
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("no answer within 5s".into()),
    }
}

/// A Postgres 15 cluster of its own: trust authentication for `postgres`,
/// on 127.0.0.1 and a free port, its socket in its own directory, and
/// `fsync=off` (its data is thrown away).
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
                r#"runuser -u postgres -- {PG_BIN}/pg_ctl -D "$KURIR_DIR/data" -m immediate -w -t 10 stop"#
            ),
        );
        let mut postgres = Self {
            data: dir.join("data"),
            dir,
            port: free_port(),
        };
        let mut initdb = as_postgres(&format!("{PG_BIN}/initdb"));
        initdb
            .arg("-D")
            .arg(&postgres.data)
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
            self.dir.display()
        )
    }

    async fn pg_ctl(&self, action: &str) -> Result<(), String> {
        let mut pg_ctl = as_postgres(&format!("{PG_BIN}/pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
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
fn stop_postgres(data: &Path) {
    if data.join("postmaster.pid").exists() {
        let mut pg_ctl = as_postgres(&format!("{PG_BIN}/pg_ctl"));
        pg_ctl
            .arg("-D")
            .arg(data)
            .args(["-m", "immediate", "-w", "-t", "10", "stop"]);
        let _ = run("pg_ctl stop -m immediate", pg_ctl, Duration::from_secs(15));
    }
    let postmaster = pids_of("postgres", &format!("-D {}", data.display()));
    let left = kill_and_wait(&postmaster, KILL_LIMIT);
    if !left.is_empty() {
        tracing::error!(?left, "private Postgres survived SIGKILL");
    }
}

fn as_postgres(program: &str) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--", program]);
    command
}

/// [`BASE`], created if need be.
fn base_dir() -> &'static Path {
    let base = Path::new(BASE);
    fs::create_dir_all(base).expect("create the private nodes' base directory");
    // The servers' users must reach their directories through it.
    fs::set_permissions(base, fs::Permissions::from_mode(0o755))
        .expect("open the private nodes' base directory");
    base
}

/// A new directory under [`BASE`] for this process: `(path, id)`.
fn node_dir(kind: &str) -> (PathBuf, String) {
    let base = base_dir();
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let dir = base.join(format!("{kind}-{}-{id}", std::process::id()));
    fs::create_dir(&dir).expect("create a private node directory");
    let me = std::process::id();
    write(
        &dir.join("owner"),
        &format!("{me} {}\n", start_time(me).unwrap_or_default()),
    );
    (dir, id)
}

/// Starts a detached shell (its own session, so Ctrl-C on the tests does
/// not reach it) that runs `stop` and removes `dir` if this process dies
/// while `dir` still exists; it exits by itself once `dir` is gone.
fn watchdog(dir: &Path, stop: &str) {
    let script = format!(
        r#"while kill -0 "$KURIR_OWNER" 2>/dev/null && [ -d "$KURIR_DIR" ]; do sleep 1; done
[ -d "$KURIR_DIR" ] || exit 0
{stop}
rm -rf "$KURIR_DIR""#
    );
    let mut command = Command::new("setsid");
    command
        .args(["-f", "sh", "-c", &script])
        .env("KURIR_OWNER", std::process::id().to_string())
        .env("KURIR_DIR", dir)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // `setsid -f` returns at once, leaving the watchdog to init.
    let status = command.status().expect("start a watchdog");
    assert!(status.success(), "setsid failed to start a watchdog");
}

/// Once per test process: stops servers and removes directories (and command
/// output files) left under [`BASE`] by test processes that are gone (killed
/// before Drop could run).
fn sweep_stale() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = fs::read_dir(BASE) else {
            return;
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let mut parts = name.splitn(3, '-');
            let (Some(kind), Some(owner)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(owner) = owner.parse::<u32>() else {
                continue;
            };
            if owner_alive(&dir, owner) {
                continue;
            }
            match kind {
                "rmq" => {
                    kill_and_wait(&vm_pids(&dir), KILL_LIMIT);
                }
                "pg" => stop_postgres(&dir.join("data")),
                // A command's output, left by a process killed meanwhile.
                "cmd" => {
                    let _ = fs::remove_file(&dir);
                    continue;
                }
                _ => continue,
            }
            tracing::warn!(dir = %dir.display(), "removed a private node left by a dead test process");
            remove_dir(&dir);
        }
    });
}

/// Whether the process that created `dir` runs still (the same process,
/// not a later one that got its pid).
fn owner_alive(dir: &Path, owner: u32) -> bool {
    if !alive(owner) {
        return false;
    }
    let recorded = fs::read_to_string(dir.join("owner")).unwrap_or_default();
    match recorded.split_whitespace().nth(1) {
        Some(time) if !time.is_empty() => start_time(owner).as_deref() == Some(time),
        _ => true,
    }
}

/// Field 22 of /proc/<pid>/stat: when the process started.
fn start_time(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19).map(str::to_owned)
}

/// Whether `pid` runs still. A zombie is dead (only its parent's wait is
/// missing; here init reaps with a delay of a second or so) once all its
/// threads are gone, not while a killed process's main thread waits for the
/// others. Its sockets may close a moment later still: Drop also waits for
/// the port.
fn alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(end) = stat.rfind(')') else {
        return true;
    };
    let fields: Vec<&str> = stat[end + 1..].split_whitespace().collect();
    let zombie = fields.first() == Some(&"Z");
    let threads: u32 = fields.get(17).and_then(|n| n.parse().ok()).unwrap_or(1);
    !zombie || threads > 1
}

/// The Erlang VMs of the node in `dir`, found by the marker on their command
/// line (never by a pid file alone: its pid may belong to another process by
/// now, and this must never hit the shared node).
fn vm_pids(dir: &Path) -> Vec<u32> {
    pids_of("beam.smp", &format!("-kurir_test_node {}", dir.display()))
}

fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect(),
    )
}

/// Live processes whose program ends with `program` and whose arguments,
/// joined by spaces, contain `needle`.
fn pids_of(program: &str, needle: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            cmdline(pid).is_some_and(|args| {
                args.first().is_some_and(|arg| arg.ends_with(program))
                    && args.join(" ").contains(needle)
            })
        })
        .filter(|&pid| alive(pid))
        .collect()
}

/// SIGKILLs `pids` and waits up to `limit` for them to be gone; returns
/// those still there.
fn kill_and_wait(pids: &[u32], limit: Duration) -> Vec<u32> {
    for pid in pids {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
    let deadline = Instant::now() + limit;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|&pid| alive(pid)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `command` (in a process group of its own, from `/`) with its output
/// in a file under [`BASE`], so that a daemon it starts cannot hold a pipe open. `Ok` with
/// the output if it exits 0 within `limit`; on timeout the group is killed.
fn run(what: &str, mut command: Command, limit: Duration) -> Result<String, String> {
    // Named after this process, so the sweep removes it should this process
    // be killed while the command runs.
    let out_path = base_dir().join(format!(
        "cmd-{}-{}.out",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let out = fs::File::create(&out_path).map_err(|err| format!("{what}: {err}"))?;
    let err_out = out.try_clone().map_err(|err| format!("{what}: {err}"))?;
    command
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err_out)
        .process_group(0);
    let spawned = command.spawn();
    let read_output = || {
        let output = fs::read_to_string(&out_path).unwrap_or_default();
        let _ = fs::remove_file(&out_path);
        output
    };
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            read_output();
            return Err(format!("cannot run {what}: {err}"));
        }
    };
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => break None,
            Err(err) => {
                read_output();
                return Err(format!("waiting for {what}: {err}"));
            }
        }
    };
    match status {
        Some(status) if status.success() => Ok(read_output()),
        Some(status) => Err(format!(
            "{what} failed ({status}): {}",
            read_output().trim()
        )),
        None => {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "{what} did not finish within {limit:?}: {}",
                read_output().trim()
            ))
        }
    }
}

async fn run_async(what: &str, command: Command, limit: Duration) -> Result<String, String> {
    let what = what.to_owned();
    tokio::task::spawn_blocking(move || run(&what, command, limit))
        .await
        .expect("a command thread")
}

/// A port nothing listens on now (bound to 127.0.0.1:0, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Waits until nothing listens on `port` (at most `limit`); whether so.
fn wait_port_closed(port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !port_open(port) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Panics unless `port` refuses connections within [`STOP_LIMIT`].
async fn await_port_closed(port: u16, server: &str) {
    let closed = tokio::task::spawn_blocking(move || wait_port_closed(port, STOP_LIMIT))
        .await
        .expect("a port thread");
    assert!(
        closed,
        "{server} still listens on {port} {STOP_LIMIT:?} after being stopped"
    );
}

pub fn port_open(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

fn write(path: &Path, contents: &str) {
    fs::write(path, contents).expect("write a node file");
}

/// `(uid, gid)` of a system user, from /etc/passwd.
fn user_ids(user: &str) -> (u32, u32) {
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() > 3 && fields[0] == user)
        .and_then(|fields| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
        .unwrap_or_else(|| panic!("no user {user} in /etc/passwd; is its server installed?"))
}

/// Gives `dir` and everything in it to `user`.
fn chown_tree(dir: &Path, user: &str) {
    let (uid, gid) = user_ids(user);
    fn walk(path: &Path, uid: u32, gid: u32) {
        chown(path, Some(uid), Some(gid)).expect("chown a node directory");
        if path.is_dir() {
            for entry in fs::read_dir(path).expect("list a node directory").flatten() {
                walk(&entry.path(), uid, gid);
            }
        }
    }
    walk(dir, uid, gid);
}

fn remove_dir(dir: &Path) {
    if let Err(err) = fs::remove_dir_all(dir)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::error!(dir = %dir.display(), %err, "cannot remove a private node directory");
    }
}

/// The last `lines` lines of a log file.
fn tail(path: &Path, lines: usize) -> String {
    let text =
        fs::read_to_string(path).unwrap_or_else(|err| format!("({}: {err})", path.display()));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{PrivateBroker, PrivatePostgres, port_open};
    use crate::support::{DEADLINE, eventually};

    async fn amqp_connect(url: &str) -> Result<lapin::Connection, String> {
        let connect = lapin::Connection::connect(url, lapin::ConnectionProperties::default());
        match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(result) => result.map_err(|err| err.to_string()),
            Err(_) => Err("no answer within 5s".into()),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs rabbitmq-server, PostgreSQL 15 and root: cargo test -- --include-ignored"]
    async fn a_private_broker_stops_and_starts_its_app_and_is_gone_after_drop() {
        crate::support::init_logs();
        let broker = PrivateBroker::start().await;
        let url = broker.amqp_url();
        let open = amqp_connect(&url)
            .await
            .expect("guest connects to the private node over 127.0.0.1");
        // The shared node is not this one.
        assert_ne!(broker.port(), 5672);
        assert!(broker.node().starts_with("kt_"), "{}", broker.node());

        broker.stop_app().await;
        assert!(
            amqp_connect(&url).await.is_err(),
            "a stopped app refuses connections"
        );
        eventually(DEADLINE, || async {
            (!open.status().connected()).then_some(())
        })
        .await
        .expect("stop_app closes open connections");

        broker.start_app().await;
        let again = amqp_connect(&url)
            .await
            .expect("connections succeed after start_app");
        let channel = again.create_channel().await.expect("a channel");
        channel
            .queue_declare(
                "kt_selftest".into(),
                lapin::options::QueueDeclareOptions::default(),
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("declare a queue on the restarted node");
        let _ = again.close(200, "done".into()).await;

        let (port, dir) = (broker.port(), broker.dir().to_owned());
        drop(broker);
        assert!(!port_open(port), "the node's port is closed after Drop");
        assert!(!dir.exists(), "the node's directory is removed by Drop");
    }

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
