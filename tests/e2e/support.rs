//! `TestApp`: one kurir (API + worker + sandbox provider) per test, over the
//! real Postgres and RabbitMQ, with its own database (cloned from a migrated
//! template) and its own queue prefix, so tests run in parallel and leave
//! nothing behind.

use std::{
    future::Future,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use kurir_api::config::ApiArgs;
use kurir_bus::Topology;
use kurir_core::{
    apikey::ApiKey,
    config::{self, BusArgs, DatabaseArgs, ShutdownArgs},
};
use kurir_sandbox::Sandbox;
use kurir_store::{PgPool, migrate};
use kurir_worker::config::{ProviderArgs, ProviderKind, RetryArgs, WorkerArgs};
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use crate::proxy::{Proxy, upstream_of};

const PG_HINT: &str = "start Postgres: `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
     (or `docker compose up -d postgres`), or point DATABASE_URL at one";
const AMQP_HINT: &str = "start RabbitMQ: `rabbitmq-server -detached` (or `docker compose up -d rabbitmq`), \
     or point AMQP_URL at one";

/// How long an eventual outcome may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

fn base_database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn pg_config(dbname: &str) -> tokio_postgres::Config {
    pg_config_on(&base_database_url(), dbname)
}

fn pg_config_on(server: &str, dbname: &str) -> tokio_postgres::Config {
    let mut config: tokio_postgres::Config =
        server.parse().expect("DATABASE_URL is not a Postgres URL");
    config
        .dbname(dbname)
        .connect_timeout(Duration::from_secs(5));
    config
}

/// The URL of database `dbname` on the machine's Postgres.
pub fn database_url(dbname: &str) -> String {
    url_on(&base_database_url(), dbname)
}

fn url_on(server: &str, dbname: &str) -> String {
    let mut url = url::Url::parse(server).expect("DATABASE_URL is not a URL");
    url.set_path(dbname);
    url.to_string()
}

async fn admin_on(server: &str) -> tokio_postgres::Client {
    migrate::connect(&pg_config_on(server, "postgres"))
        .await
        .unwrap_or_else(|err| panic!("cannot reach Postgres ({err}); {PG_HINT}"))
}

async fn admin() -> tokio_postgres::Client {
    admin_on(&base_database_url()).await
}

/// The migrated template every test database is cloned from; built once per
/// migration set, guarded by an advisory lock across test processes.
async fn template() -> &'static str {
    static TEMPLATE: OnceCell<String> = OnceCell::const_new();
    TEMPLATE
        .get_or_init(|| async {
            let name = format!("kurir_tmpl_{}", migrate::fingerprint());
            ensure_template(&name).await;
            name
        })
        .await
}

/// Builds template `name` unless it exists. Another checkout's test run
/// (other migrations, so another name) drops it as stale, so a clone that
/// finds it gone calls this again.
async fn ensure_template(name: &str) {
    let client = admin().await;
    client
        .execute("SELECT pg_advisory_lock(4242424242)", &[])
        .await
        .expect("advisory lock");
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .expect("look for the template")
        .is_some();
    if !exists {
        let building = format!("{name}_building");
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"))
            .await
            .expect("drop a half-built template");
        migrate::run(&pg_config(&building))
            .await
            .expect("migrate the template");
        client
            .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {name}"))
            .await
            .expect("publish the template");
        // Templates of older migration sets are of no more use.
        let stale = client
            .query(
                "SELECT datname FROM pg_database WHERE datname LIKE 'kurir\\_tmpl\\_%' AND datname <> $1",
                &[&name],
            )
            .await
            .expect("list old templates");
        for row in stale {
            let old: String = row.get(0);
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {old} WITH (FORCE)"))
                .await;
        }
    }
    client
        .execute("SELECT pg_advisory_unlock(4242424242)", &[])
        .await
        .expect("advisory unlock");
}

fn unique(tag: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{tag}_{}_{n}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A fresh migrated database: cloned from the template on the machine's
/// Postgres, or migrated from scratch on another server (a private one).
async fn create_database(server: Option<&str>) -> String {
    if let Some(server) = server {
        let name = unique("kurir_t");
        migrate::run(&pg_config_on(server, &name))
            .await
            .expect("migrate a database on the private Postgres");
        return name;
    }
    let template = template().await;
    let name = unique("kurir_t");
    let client = admin().await;
    let sql = format!("CREATE DATABASE {name} TEMPLATE {template}");
    for _ in 0..100 {
        match client.batch_execute(&sql).await {
            Ok(()) => return name,
            // Another clone or a lingering connection holds the template for a moment.
            Err(err) if err.code() == Some(&SqlState::OBJECT_IN_USE) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Another checkout's tests dropped it as stale: build it again.
            Err(err) if err.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
                ensure_template(template).await;
            }
            Err(err) => panic!(
                "cannot create the test database: {}",
                err.as_db_error()
                    .map_or(err.to_string(), |db| db.message().to_owned())
            ),
        }
    }
    panic!("the template database stayed busy");
}

/// What a test may change before the app starts.
#[derive(Debug, Clone)]
pub struct Options {
    pub start_worker: bool,
    /// Point the API's publisher at another broker URL (e.g. nowhere).
    pub api_amqp_url: Option<String>,
    /// The worker's `KURIR_PUBLISH_LEASE`.
    pub publish_lease: Duration,
    pub retry_initial: Duration,
    /// How long a worker owns a row it is delivering.
    pub delivery_lease: Duration,
    pub sandbox: kurir_sandbox::Config,
    /// Route the API's Postgres connections through a proxy the test can cut.
    pub proxy_api_postgres: bool,
    /// Route the worker's Postgres connections through a proxy.
    pub proxy_worker_postgres: bool,
    /// Route every RabbitMQ connection (API and worker) through a proxy.
    pub proxy_broker: bool,
    /// Another Postgres server (base URL) instead of the machine's.
    pub postgres: Option<String>,
    /// Another RabbitMQ (AMQP URL) instead of the machine's.
    pub amqp: Option<String>,
    /// The worker's `KURIR_REPUBLISH_AFTER`.
    pub republish_after: Duration,
    /// The worker's concurrency (and prefetch).
    pub worker_concurrency: u16,
    /// The worker's `KURIR_SHUTDOWN_GRACE`.
    pub shutdown_grace: Duration,
    /// The API's own settings (body limit, client timeouts). The receipts
    /// webhook's secrets default to [`APP_SECRET`] and [`VERIFY_TOKEN`].
    pub api: ApiArgs,
    /// The sandbox posts signed receipts to the API's webhook.
    pub receipts: bool,
}

/// The Meta app secret the tests' API verifies receipts with.
pub const APP_SECRET: &str = "test-app-secret";
/// The tests' `KURIR_WHATSAPP_VERIFY_TOKEN`.
pub const VERIFY_TOKEN: &str = "test-verify-token";
/// The phone number id the tests' worker sends from.
pub const PHONE_NUMBER_ID: &str = "1234567890";

impl Default for Options {
    fn default() -> Self {
        let sandbox = kurir_sandbox::Config {
            addr: "127.0.0.1:0".parse().expect("address"),
            token: Some("test-token".into()),
            ..kurir_sandbox::Config::default()
        };
        Self {
            start_worker: true,
            api_amqp_url: None,
            publish_lease: Duration::from_secs(2),
            retry_initial: Duration::from_millis(100),
            delivery_lease: Duration::from_secs(10),
            sandbox,
            proxy_api_postgres: false,
            proxy_worker_postgres: false,
            proxy_broker: false,
            postgres: None,
            amqp: None,
            republish_after: Duration::from_secs(300),
            worker_concurrency: 8,
            shutdown_grace: Duration::from_secs(5),
            api: config::defaults(),
            receipts: false,
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub key: String,
    pub sandbox: Sandbox,
    pub pool: PgPool,
    pub database_args: DatabaseArgs,
    pub bus_args: BusArgs,
    pub http: reqwest::Client,
    pub api_postgres: Option<Proxy>,
    pub worker_postgres: Option<Proxy>,
    pub broker: Option<Proxy>,
    options: Options,
    /// The API's settings, for another API process on the same database.
    api_config: kurir_api::Config,
    /// The Postgres server (base URL) and database this app uses.
    server: String,
    database: String,
    prefix: String,
    shutdown: CancellationToken,
    /// The running worker and the token that stops it alone.
    worker: Option<(kurir_worker::Worker, CancellationToken)>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(options: Options) -> Self {
        init_logs();
        let server = options.postgres.clone().unwrap_or_else(base_database_url);
        let database = create_database(options.postgres.as_deref()).await;
        let prefix = unique("kt");
        let shutdown = CancellationToken::new();
        // The API's address first: the sandbox posts receipts to it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = format!("http://{}", listener.local_addr().expect("address"));
        let mut sandbox_config = options.sandbox.clone();
        if options.receipts {
            sandbox_config.receipts_url = Some(format!("{address}/v1/webhooks/whatsapp"));
            sandbox_config.app_secret = Some(APP_SECRET.into());
        }
        let sandbox = kurir_sandbox::start(sandbox_config)
            .await
            .expect("start the sandbox");

        let mut database_args: DatabaseArgs = config::defaults();
        database_args.database_url = url_on(&server, &database);
        database_args.db_pool_size = 4;
        database_args.db_timeout = Duration::from_secs(2);
        let mut bus_args: BusArgs = config::defaults();
        bus_args.amqp_url = options.amqp.clone().unwrap_or_else(amqp_url);
        bus_args.queue_prefix = prefix.clone();
        let mut shutdown_args: ShutdownArgs = config::defaults();
        shutdown_args.shutdown_grace = Duration::from_secs(5);

        ensure_broker(&bus_args.amqp_url).await;
        let proxy = |wanted: bool, url: String, port: u16| async move {
            match wanted {
                true => Some(Proxy::start(upstream_of(&url, port)).await),
                false => None,
            }
        };
        let api_postgres = proxy(
            options.proxy_api_postgres,
            database_args.database_url.clone(),
            5432,
        )
        .await;
        let worker_postgres = proxy(
            options.proxy_worker_postgres,
            database_args.database_url.clone(),
            5432,
        )
        .await;
        let broker = proxy(options.proxy_broker, bus_args.amqp_url.clone(), 5672).await;
        if let Some(broker) = &broker {
            bus_args.amqp_url = broker.url(&bus_args.amqp_url);
        }
        let mut api_bus = bus_args.clone();
        if let Some(url) = &options.api_amqp_url {
            api_bus.amqp_url = url.clone();
        }
        let mut api_database = database_args.clone();
        if let Some(proxy) = &api_postgres {
            api_database.database_url = proxy.url(&api_database.database_url);
        }
        let mut api = options.api.clone();
        api.receipts
            .whatsapp_app_secret
            .get_or_insert_with(|| APP_SECRET.into());
        api.receipts
            .whatsapp_verify_token
            .get_or_insert_with(|| VERIFY_TOKEN.into());
        let api_config = kurir_api::Config {
            database: api_database,
            bus: api_bus,
            shutdown: shutdown_args,
            api,
        };
        let state = kurir_api::AppState::new(&api_config, &shutdown).expect("api state");
        // Tests start from a connected API, so what they see does not depend
        // on how fast the first connection is (the relay covers it anyway).
        if options.api_amqp_url.is_none() && !options.proxy_broker {
            assert!(
                state
                    .publisher
                    .wait_connected(Duration::from_secs(10))
                    .await,
                "the API's publisher did not connect to RabbitMQ within 10s"
            );
        }
        tokio::spawn(kurir_api::serve(state, listener, shutdown.clone()));

        let pool = kurir_store::pool(&database_args).expect("pool");
        let mut app = Self {
            address,
            key: String::new(),
            sandbox,
            pool,
            database_args,
            bus_args,
            http: reqwest::Client::new(),
            api_postgres,
            worker_postgres,
            broker,
            options: options.clone(),
            api_config,
            server,
            database,
            prefix,
            shutdown,
            worker: None,
        };
        app.key = app.key_for("test-a").await;
        if options.start_worker {
            app.start_worker();
        }
        app
    }

    pub fn worker_config(&self) -> kurir_worker::Config {
        let mut provider: ProviderArgs = config::defaults();
        provider.provider = ProviderKind::Whatsapp;
        provider.whatsapp_base_url = self.sandbox.base_url();
        provider.whatsapp_token = Some("test-token".into());
        provider.whatsapp_phone_number_id = Some(PHONE_NUMBER_ID.into());
        provider.provider_timeout = Duration::from_secs(2);
        let mut worker: WorkerArgs = config::defaults();
        worker.worker_concurrency = self.options.worker_concurrency;
        worker.republish_after = self.options.republish_after;
        worker.relay_interval = Duration::from_millis(200);
        worker.delivery_lease = self.options.delivery_lease;
        worker.publish_lease = self.options.publish_lease;
        let mut retry: RetryArgs = config::defaults();
        retry.retry_initial = self.options.retry_initial;
        let mut shutdown: ShutdownArgs = config::defaults();
        shutdown.shutdown_grace = self.options.shutdown_grace;
        let mut database = self.database_args.clone();
        if let Some(proxy) = &self.worker_postgres {
            database.database_url = proxy.url(&database.database_url);
        }
        kurir_worker::Config {
            database,
            bus: self.bus_args.clone(),
            shutdown,
            worker,
            provider,
            retry,
        }
    }

    /// Starts a second API process over the same database and broker (as
    /// `kurir api` run twice would be); its base URL. It stops with the app.
    pub async fn another_api(&self) -> String {
        let state =
            kurir_api::AppState::new(&self.api_config, &self.shutdown).expect("second api state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(kurir_api::serve(state, listener, self.shutdown.clone()));
        address
    }

    pub fn start_worker(&mut self) {
        self.worker = Some(self.another_worker());
    }

    /// A worker besides the app's own, with the same settings; the caller
    /// owns it (abort it, or fire its token and wait).
    pub fn another_worker(&self) -> (kurir_worker::Worker, CancellationToken) {
        let stop = self.shutdown.child_token();
        let worker = kurir_worker::Worker::start(self.worker_config(), stop.clone())
            .expect("start the worker");
        (worker, stop)
    }

    /// Consumers attached to this app's deliveries queue, as the broker counts them.
    pub async fn consumers(&self) -> u32 {
        self.deliveries_queue().await.consumer_count()
    }

    /// Envelopes ready in this app's deliveries queue.
    pub async fn envelopes_ready(&self) -> u32 {
        self.deliveries_queue().await.message_count()
    }

    async fn deliveries_queue(&self) -> lapin::Queue {
        let (connection, channel) = self.broker_channel().await;
        let options = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let queue = channel
            .queue_declare(
                self.topology().deliveries().into(),
                options,
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("the deliveries queue exists");
        let _ = connection.close(200, "done".into()).await;
        queue
    }

    /// Stops the worker as if killed: nothing is settled or released.
    pub fn kill_worker(&mut self) {
        if let Some((worker, _)) = self.worker.take() {
            worker.abort();
        }
    }

    /// Stops the worker as SIGTERM does: it finishes what it holds within
    /// its grace period, gives back what it could not, and closes its connections.
    pub async fn stop_worker(&mut self) {
        if let Some((worker, stop)) = self.worker.take() {
            stop.cancel();
            worker.wait().await;
        }
    }

    /// This app's queues.
    pub fn topology(&self) -> Topology {
        Topology::new(self.prefix.clone())
    }

    /// A channel on this app's broker, behind kurir's back (the connection
    /// closes when both are dropped).
    pub async fn broker_channel(&self) -> (lapin::Connection, lapin::Channel) {
        let url = self.options.amqp.clone().unwrap_or_else(amqp_url);
        let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = connection.create_channel().await.expect("channel");
        (connection, channel)
    }

    /// Deletes this app's deliveries queue behind kurir's back.
    pub async fn delete_deliveries_queue(&self) {
        let (connection, channel) = self.broker_channel().await;
        let queue = self.topology().deliveries();
        channel
            .queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default())
            .await
            .expect("delete the queue");
        let _ = connection.close(200, "done".into()).await;
    }

    /// The environment a `kurir` process needs to work on this app's
    /// database and queues (its worker delivering to the sandbox).
    pub fn process_env(&self) -> Vec<(String, String)> {
        let config = self.worker_config();
        [
            ("DATABASE_URL", config.database.database_url),
            ("AMQP_URL", config.bus.amqp_url),
            ("KURIR_QUEUE_PREFIX", config.bus.queue_prefix),
            ("KURIR_DB_POOL_SIZE", "4".into()),
            ("KURIR_DB_TIMEOUT", "2s".into()),
            ("KURIR_PROVIDER", "whatsapp".into()),
            ("KURIR_WHATSAPP_BASE_URL", self.sandbox.base_url()),
            ("KURIR_WHATSAPP_TOKEN", "test-token".into()),
            ("KURIR_WHATSAPP_PHONE_NUMBER_ID", PHONE_NUMBER_ID.into()),
            ("KURIR_PROVIDER_TIMEOUT", "2s".into()),
            ("KURIR_WORKER_METRICS_ADDR", "127.0.0.1:0".into()),
            ("KURIR_RELAY_INTERVAL", "200ms".into()),
            (
                "KURIR_DELIVERY_LEASE",
                as_setting(self.options.delivery_lease),
            ),
            (
                "KURIR_REPUBLISH_AFTER",
                as_setting(self.options.republish_after),
            ),
            (
                "KURIR_WORKER_CONCURRENCY",
                self.options.worker_concurrency.to_string(),
            ),
            ("KURIR_LOG_FORMAT", "text".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.http.get(self.url(path)).bearer_auth(&self.key)
    }

    /// GETs `path` with the app's key; the JSON body, whatever the status.
    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.get(path).send().await.expect("request");
        response.json().await.expect("a JSON body")
    }

    pub fn post(&self, path: &str, body: &Value) -> RequestBuilder {
        self.http
            .post(self.url(path))
            .bearer_auth(&self.key)
            .json(body)
    }

    /// A key for another account of this app's database.
    pub async fn key_for(&self, account: &str) -> String {
        let client = self.pool.get().await.expect("connection");
        let account = kurir_store::keys::ensure_account(&client, account)
            .await
            .expect("account");
        let key = ApiKey::generate();
        kurir_store::keys::insert_key(&client, account, key.key_id(), &key.hash())
            .await
            .expect("key");
        key.expose().to_owned()
    }

    pub async fn create_user(&self, id: &str, phone: &str) -> Value {
        let response = self
            .post(
                "/v1/users",
                &json!({"id": id, "name": format!("User {id}"), "phone_number": phone}),
            )
            .send()
            .await
            .expect("create user");
        assert_eq!(response.status(), StatusCode::CREATED, "creating {id}");
        response.json().await.expect("user json")
    }

    /// Sends a message; returns its id.
    pub async fn send(&self, user: &str, text: &str) -> String {
        let response = self
            .post(
                &format!("/v1/users/{user}/messages"),
                &json!({"message": text}),
            )
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), StatusCode::ACCEPTED, "sending to {user}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["message_status"], "queued");
        body["message_id"].as_str().expect("message_id").to_owned()
    }

    /// Sends `count` messages to `user`, 16 requests at a time; their ids.
    pub async fn send_many(&self, user: &str, count: usize) -> Vec<String> {
        use futures_util::StreamExt;
        futures_util::stream::iter(0..count)
            .map(|n| async move { self.send(user, &format!("message {n}")).await })
            .buffer_unordered(16)
            .collect()
            .await
    }

    /// Waits until the API accepts a message again (after an outage); its id.
    pub async fn accepted_again(&self, user: &str) -> String {
        eventually(Duration::from_secs(30), || async {
            let response = self
                .post(
                    &format!("/v1/users/{user}/messages"),
                    &json!({"message": "back"}),
                )
                .send()
                .await
                .expect("send");
            if response.status() != StatusCode::ACCEPTED {
                return None;
            }
            let body: Value = response.json().await.expect("json");
            Some(body["message_id"].as_str().expect("message_id").to_owned())
        })
        .await
        .expect("the API accepts again once Postgres is back")
    }

    /// How many of this app's messages are in `state`, straight from Postgres.
    pub async fn count_in_state(&self, state: &str) -> i64 {
        let client = self.pool.get().await.expect("connection");
        client
            .query_one("SELECT count(*) FROM messages WHERE state = $1", &[&state])
            .await
            .expect("count messages")
            .get(0)
    }

    /// Waits until `count` messages are `sent`; panics with the states seen if not within `limit`.
    pub async fn all_sent(&self, count: i64, limit: Duration) {
        let done = eventually(limit, || async {
            (self.count_in_state("sent").await == count).then_some(())
        })
        .await;
        if done.is_none() {
            let client = self.pool.get().await.expect("connection");
            let states: Vec<(String, bool, i64)> = client
                .query(
                    "SELECT state, published, count(*) FROM messages GROUP BY 1, 2 ORDER BY 1, 2",
                    &[],
                )
                .await
                .expect("states")
                .iter()
                .map(|row| (row.get(0), row.get(1), row.get(2)))
                .collect();
            panic!(
                "not all {count} messages were sent within {limit:?}: (state, published, count) = {states:?}"
            );
        }
    }

    /// Sets a user's status; returns the status update's id.
    pub async fn set_status(&self, user: &str, status: &str) -> String {
        let response = self
            .post(
                &format!("/v1/users/{user}/status"),
                &json!({"status": status}),
            )
            .send()
            .await
            .expect("set status");
        assert_eq!(response.status(), StatusCode::ACCEPTED, "status for {user}");
        let body: Value = response.json().await.expect("json");
        body["status_update_id"]
            .as_str()
            .expect("status_update_id")
            .to_owned()
    }

    pub async fn message(&self, id: &str) -> Value {
        let response = self
            .get(&format!("/v1/messages/{id}"))
            .send()
            .await
            .expect("poll");
        assert_eq!(response.status(), StatusCode::OK);
        response.json().await.expect("json")
    }

    /// Polls a message until `done` holds for it.
    pub async fn message_until(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let last = std::sync::Mutex::new(Value::Null);
        let reached = eventually(DEADLINE, || async {
            let message = self.message(id).await;
            let reached = done(&message).then(|| message.clone());
            *last.lock().expect("lock") = message;
            reached
        })
        .await;
        reached.unwrap_or_else(|| {
            let last = last.lock().expect("lock");
            panic!("message {id} never reached the expected state; last seen: {last:#}")
        })
    }

    pub async fn message_with_status(&self, id: &str, status: &str) -> Value {
        self.message_until(id, |m| m["message_status"] == status)
            .await
    }

    /// A message's attempts as the store records them (with the provider's name).
    pub async fn attempts(&self, id: &str) -> Vec<kurir_store::pipeline::AttemptRecord> {
        let id = uuid::Uuid::parse_str(id).expect("uuid");
        let client = self.pool.get().await.expect("connection");
        let account =
            kurir_store::keys::account_for_key(&client, &kurir_core::apikey::hash(&self.key))
                .await
                .expect("look up the key")
                .expect("the app's key has an account");
        kurir_store::pipeline::attempts_for(&client, account, kurir_core::JobKind::Message, id)
            .await
            .expect("attempts")
            .expect("the message exists")
    }

    /// Polls a status update until `done` holds for it.
    pub async fn status_update_until(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let path = format!("/v1/status-updates/{id}");
        let last = std::sync::Mutex::new(Value::Null);
        let reached = eventually(DEADLINE, || async {
            let update = self.get_json(&path).await;
            let reached = done(&update).then(|| update.clone());
            *last.lock().expect("lock") = update;
            reached
        })
        .await;
        reached.unwrap_or_else(|| {
            let last = last.lock().expect("lock");
            panic!("status update {id} never reached the expected state; last seen: {last:#}")
        })
    }

    /// Sandbox requests that carried this message id.
    pub fn sandbox_requests_for(&self, id: &str) -> Vec<kurir_sandbox::RecordedRequest> {
        self.sandbox
            .requests()
            .into_iter()
            .filter(|r| r.biz_opaque_callback_data.as_deref() == Some(id))
            .collect()
    }
}

/// Logs go to the test's captured output (shown for a failing test);
/// `RUST_LOG` picks the level, `warn` by default.
pub fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

/// Polls `check` every 50 ms until it returns `Some` or `limit` passes.
pub async fn eventually<T, F, Fut>(limit: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn as_setting(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

async fn ensure_broker(url: &str) {
    let properties = lapin::ConnectionProperties::default();
    match tokio::time::timeout(
        Duration::from_secs(5),
        lapin::Connection::connect(url, properties),
    )
    .await
    {
        Ok(Ok(connection)) => {
            let _ = connection.close(200, "probe".into()).await;
        }
        Ok(Err(err)) => panic!("cannot reach RabbitMQ ({err}); {AMQP_HINT}"),
        Err(_) => panic!("RabbitMQ did not answer within 5s; {AMQP_HINT}"),
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.kill_worker();
        self.pool.close();
        let database = self.database.clone();
        let prefix = self.prefix.clone();
        let server = self.server.clone();
        let amqp = self.options.amqp.clone().unwrap_or_else(amqp_url);
        // Clean up on a thread of its own: Drop cannot await.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(async move {
                // A private server may be gone already: then so is the database.
                if let Ok(Ok(client)) = tokio::time::timeout(
                    Duration::from_secs(5),
                    migrate::connect(&pg_config_on(&server, "postgres")),
                )
                .await
                {
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
                        .await;
                }
                let connect =
                    lapin::Connection::connect(&amqp, lapin::ConnectionProperties::default());
                if let Ok(Ok(connection)) =
                    tokio::time::timeout(Duration::from_secs(5), connect).await
                    && let Ok(channel) = connection.create_channel().await
                {
                    let _ = Topology::new(prefix).delete(&channel).await;
                    let _ = connection.close(200, "cleanup".into()).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}
