//! [`PrivateBroker`]: a RabbitMQ node of its own (see the parent module).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use super::{
    COMMAND_LIMIT, KILL_LIMIT, PORT_ATTEMPTS, await_port_closed, chown_tree, free_port,
    kill_and_wait, node_dir, remove_dir, run_async, servers, sweep_stale, tail, vm_pids,
    wait_port_closed, watchdog, write,
};

/// The packaged wrappers: run as root, they drop to the `rabbitmq` user (via
/// `su`, which keeps the environment) and so use its Erlang cookie. Paths as
/// the servers see them (see the parent module).
const RABBITMQ_SERVER: &str = "/usr/sbin/rabbitmq-server";
const RABBITMQCTL: &str = "/usr/sbin/rabbitmqctl";
/// A node boots in about 5 s on an idle machine; two cores shared with other
/// builds and tests can make that several times longer.
const BROKER_BOOT: Duration = Duration::from_secs(60);

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
            // VM that carries this node's marker (its directory as the
            // servers see it).
            r#"n=0
while [ ! -s "$KURIR_DIR/pid" ] && [ $n -lt 30 ]; do sleep 1; n=$((n+1)); done
for p in /proc/[0-9]*; do
  case "$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)" in
    *beam.smp*"-kurir_test_node $KURIR_NODE_DIR"*) kill -KILL "${p#/proc/}" ;;
  esac
done
sleep 2"#,
        );
        broker
    }

    async fn boot(&self) -> Result<(), BootError> {
        let launched = Instant::now();
        let mut server = servers().command(RABBITMQ_SERVER);
        server.arg("-detached").envs(self.env());
        run_async("rabbitmq-server -detached", server, COMMAND_LIMIT)
            .await
            .map_err(BootError::Failed)?;
        self.await_amqp(launched, BROKER_BOOT).await
    }

    /// The environment that makes `rabbitmq-server` boot this node and
    /// nothing of the shared one.
    fn env(&self) -> Vec<(&'static str, String)> {
        let inside = servers().inside(&self.dir);
        let dir = |name: &str| inside.join(name).display().to_string();
        let mut env = vec![
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
                    inside.display()
                ),
            ),
            ("ERL_EPMD_ADDRESS", "127.0.0.1".into()),
            // Not /var/lib/rabbitmq, the wrapper's working directory.
            ("ERL_CRASH_DUMP", dir("erl_crash.dump")),
        ];
        env.extend(epmd_env());
        env
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

    /// `rabbitmqctl -n <this node>`, from the servers' root if they have
    /// one and asking their epmd; add the command and its arguments.
    pub fn rabbitmqctl(&self) -> Command {
        let mut ctl = servers().command(RABBITMQCTL);
        ctl.args(["-n", &self.node]).envs(epmd_env());
        ctl
    }

    async fn ctl(&self, command: &str) {
        let mut ctl = self.rabbitmqctl();
        ctl.arg(command);
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

/// `ERL_EPMD_PORT` if the servers' epmd is not on Erlang's default port.
fn epmd_env() -> Option<(&'static str, String)> {
    servers()
        .epmd_port
        .map(|port| ("ERL_EPMD_PORT", port.to_string()))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::PrivateBroker;
    use crate::nodes::port_open;
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
}
