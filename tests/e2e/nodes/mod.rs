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
//!
//! # Which servers
//!
//! By default the machine's own: `/usr/sbin/rabbitmq-server` and
//! `/usr/sbin/rabbitmqctl` (nodes register with the machine's epmd, Erlang's
//! default port 4369) and PostgreSQL 15 from `/usr/lib/postgresql/15/bin`.
//! These variables run other versions from a root file system instead, such
//! as RabbitMQ 4 and PostgreSQL 17 from the chroot of
//! `scripts/debian13-servers` (see docs/testing.md):
//!
//! - `KURIR_TEST_SERVERS_ROOT`: a root file system with `rabbitmq-server`
//!   and a PostgreSQL server installed and `/proc` mounted
//!   (`/var/cache/kurir/trixie-servers` once `scripts/debian13-servers up`
//!   ran). Every server and tool then runs in it through `chroot`, as the
//!   root's own `rabbitmq` and `postgres` users. Node directories are made
//!   under `<root>/tmp/kurir-test-nodes` (the sweep looks there), which the
//!   servers see as [`BASE`]: paths given to them are translated.
//! - `KURIR_TEST_PG_BIN`: the directory of `initdb`, `pg_ctl` and `postgres`,
//!   as the servers see it. Default: `/usr/lib/postgresql/15/bin`, or with a
//!   root the newest `/usr/lib/postgresql/<version>/bin` in it.
//! - `KURIR_TEST_EPMD_PORT`: the port of the epmd that private RabbitMQ
//!   nodes register with and `rabbitmqctl` asks (`ERL_EPMD_PORT`). Default:
//!   unset (Erlang's 4369), or with a root 4370, the port of the epmd that
//!   `scripts/debian13-servers` runs for its node `kurir4@localhost` (a node
//!   started first starts that epmd; the script's `down` stops it). The
//!   chroot's RabbitMQ 4 (Erlang 27) never shares the machine's epmd.

use std::{
    fs,
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::{
        fs::{PermissionsExt, chown},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Once, OnceLock},
    time::{Duration, Instant},
};

mod broker;
mod postgres;

pub use broker::PrivateBroker;
pub use postgres::PrivatePostgres;
use postgres::stop_postgres;

/// Where private nodes keep their data, logs and sockets, as the servers see
/// it (with `KURIR_TEST_SERVERS_ROOT` set, this process finds it under the
/// root: see [`Servers::base`]).
pub const BASE: &str = "/tmp/kurir-test-nodes";
/// How long a server may take to close its port once told to stop.
const STOP_LIMIT: Duration = Duration::from_secs(20);
/// How long one `rabbitmqctl`, `pg_ctl` or `initdb` call may take.
const COMMAND_LIMIT: Duration = Duration::from_secs(45);
/// How long Drop waits for a killed server to be gone.
const KILL_LIMIT: Duration = Duration::from_secs(10);
/// Attempts to boot when a port picked free was taken in the meantime.
const PORT_ATTEMPTS: usize = 3;
/// PostgreSQL's programs on the machine itself.
const HOST_PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The epmd of `scripts/debian13-servers`'s RabbitMQ 4 node.
const ROOT_EPMD_PORT: u16 = 4370;

/// Where the servers' programs come from: the machine, or a root file
/// system they run in through `chroot` (see the module's comment).
struct Servers {
    root: Option<PathBuf>,
    pg_bin: String,
    epmd_port: Option<u16>,
}

/// The servers chosen by the environment, read once.
fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(Servers::from_env)
}

impl Servers {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let root = var("KURIR_TEST_SERVERS_ROOT").map(PathBuf::from);
        if let Some(root) = &root {
            assert!(
                root.join("proc/self").exists(),
                "KURIR_TEST_SERVERS_ROOT={}: no /proc mounted in it; run `scripts/debian13-servers up`",
                root.display()
            );
        }
        let pg_bin = var("KURIR_TEST_PG_BIN").unwrap_or_else(|| match &root {
            None => HOST_PG_BIN.to_owned(),
            Some(root) => newest_pg_bin(root),
        });
        let epmd_port = var("KURIR_TEST_EPMD_PORT")
            .map(|port| {
                port.parse()
                    .unwrap_or_else(|_| panic!("KURIR_TEST_EPMD_PORT={port} is not a port"))
            })
            .or(root.as_ref().map(|_| ROOT_EPMD_PORT));
        Self {
            root,
            pg_bin,
            epmd_port,
        }
    }

    /// [`BASE`] as this process sees it.
    fn base(&self) -> PathBuf {
        match &self.root {
            None => PathBuf::from(BASE),
            Some(root) => root.join(BASE.trim_start_matches('/')),
        }
    }

    /// `path` (under [`Self::base`]) as the servers see it.
    fn inside(&self, path: &Path) -> PathBuf {
        match &self.root {
            None => path.to_owned(),
            Some(root) => Path::new("/").join(
                path.strip_prefix(root)
                    .expect("a node's path lies in the servers' root"),
            ),
        }
    }

    /// A command that runs `program` (a path as the servers see it).
    fn command(&self, program: &str) -> Command {
        match &self.root {
            None => Command::new(program),
            Some(root) => {
                let mut command = Command::new("chroot");
                command.arg(root).arg(program);
                command
            }
        }
    }

    /// `program` run as the servers' system user `user`.
    fn as_user(&self, user: &str, program: &str) -> Command {
        let mut command = self.command("runuser");
        command.args(["-u", user, "--", program]);
        command
    }

    /// A PostgreSQL program (`initdb`, `pg_ctl`) as the servers see it.
    fn pg_program(&self, name: &str) -> String {
        format!("{}/{name}", self.pg_bin)
    }

    /// The shell words that run a command in the servers' root ("" on the
    /// machine), for the watchdog's script; the root is in `$KURIR_ROOT`.
    fn shell_prefix(&self) -> &'static str {
        match self.root {
            None => "",
            Some(_) => r#"chroot "$KURIR_ROOT" "#,
        }
    }

    /// The servers' /etc/passwd.
    fn passwd(&self) -> PathBuf {
        match &self.root {
            None => PathBuf::from("/etc/passwd"),
            Some(root) => root.join("etc/passwd"),
        }
    }
}

/// `<root>/usr/lib/postgresql/<newest version>/bin`, as seen inside `root`.
fn newest_pg_bin(root: &Path) -> String {
    let versions = fs::read_dir(root.join("usr/lib/postgresql"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let newest = versions.into_iter().max().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server in {}/usr/lib/postgresql; set KURIR_TEST_PG_BIN",
            root.display()
        )
    });
    format!("/usr/lib/postgresql/{newest}/bin")
}

/// The servers' [`BASE`], created if need be.
fn base_dir() -> PathBuf {
    let base = servers().base();
    fs::create_dir_all(&base).expect("create the private nodes' base directory");
    // The servers' users must reach their directories through it.
    fs::set_permissions(&base, fs::Permissions::from_mode(0o755))
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
/// while `dir` still exists; it exits by itself once `dir` is gone. `stop`
/// finds the directory as the servers see it in `$KURIR_NODE_DIR` and the
/// servers' root (if any) in `$KURIR_ROOT`.
fn watchdog(dir: &Path, stop: &str) {
    let script = format!(
        r#"while kill -0 "$KURIR_OWNER" 2>/dev/null && [ -d "$KURIR_DIR" ]; do sleep 1; done
[ -d "$KURIR_DIR" ] || exit 0
{stop}
rm -rf "$KURIR_DIR""#
    );
    let mut command = Command::new("setsid");
    if let Some(root) = &servers().root {
        command.env("KURIR_ROOT", root);
    }
    command
        .args(["-f", "sh", "-c", &script])
        .env("KURIR_OWNER", std::process::id().to_string())
        .env("KURIR_DIR", dir)
        .env("KURIR_NODE_DIR", servers().inside(dir))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // `setsid -f` returns at once, leaving the watchdog to init.
    let status = command.status().expect("start a watchdog");
    assert!(status.success(), "setsid failed to start a watchdog");
}

/// Once per test process: stops servers and removes directories (and command
/// output files) left under the servers' [`BASE`] by test processes that are
/// gone (killed before Drop could run).
fn sweep_stale() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = fs::read_dir(servers().base()) else {
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
    pids_of(
        "beam.smp",
        &format!("-kurir_test_node {}", servers().inside(dir).display()),
    )
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
/// in a file under the servers' [`BASE`], so that a daemon it starts cannot hold a pipe open. `Ok` with
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

/// `(uid, gid)` of a system user, from the servers' /etc/passwd (a root's
/// users need not have the machine's ids).
fn user_ids(user: &str) -> (u32, u32) {
    let path = servers().passwd();
    let passwd =
        fs::read_to_string(&path).unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() > 3 && fields[0] == user)
        .and_then(|fields| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
        .unwrap_or_else(|| {
            panic!(
                "no user {user} in {}; is its server installed?",
                path.display()
            )
        })
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
