//! The `smtpgate` command: parses the command line and calls into the library.
#![forbid(unsafe_code)]

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use smtpgate::server::config_api::{ReloadRefused, ReloadRequest};
use smtpgate::{Config, Server};

#[derive(Parser)]
#[command(name = "smtpgate", version, about = "SMTP preprocessor and relay")]
struct Cli {
    /// Log format on standard error.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (with the built-in default configuration when no file is given).
    Serve {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Check a configuration file and report every mistake.
    CheckConfig { file: PathBuf },
    /// Read a password on standard input and print its hash for the users file.
    Passwd,
    /// Routing tools.
    Route {
        #[command(subcommand)]
        command: RouteCmd,
    },
    /// Look at and act on quarantined messages.
    Quarantine {
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// The admin token's file (default: `admin.token_file`, or `admin.token` in the spool).
        #[arg(long, global = true)]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        command: QuarantineCmd,
    },
    /// List, add and remove suppressed addresses (asks the running server on its admin address).
    Suppression {
        #[command(flatten)]
        admin: AdminFlags,
        #[command(subcommand)]
        command: SuppressionCmd,
    },
    /// List, change, start and cancel adaptive throttling actions (asks the running server).
    Throttle {
        #[command(flatten)]
        admin: AdminFlags,
        #[command(subcommand)]
        command: ThrottleCmd,
    },
    /// The history of a message (queue id or Message-ID) or of an address, oldest first.
    Trace {
        /// A queue id, a Message-ID or an address.
        query: String,
        /// Only events newer than this (e.g. 2h).
        #[arg(long)]
        since: Option<String>,
        /// One JSON event per line instead of a timeline.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminFlags,
    },
    /// List, show, retry, bounce, delete, hold and release queued messages (asks the running server).
    Queue {
        #[command(flatten)]
        admin: AdminFlags,
        #[command(subcommand)]
        command: QueueCmd,
    },
    /// Counts per time range: received, delivered, bounced, deferred, rates, latency (asks the
    /// running server; `/api/v1/stats`).
    Stats {
        #[command(flatten)]
        admin: AdminFlags,
        /// Break down by domain, mx, route, pool, stream, listener or sender_domain.
        #[arg(long)]
        by: Option<String>,
        /// From this long ago (e.g. 1h, 7d).
        #[arg(long, default_value = "24h")]
        since: String,
        /// Bucket size of the series: minute, hour, day or auto.
        #[arg(long, default_value = "auto")]
        bucket: String,
        /// The API's JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The counts of every node sharing the `[redis]` state, summed.
        #[arg(long)]
        all_nodes: bool,
    },
    /// Suspend delivery to a recipient domain, or of a pool, route or stream (asks the running
    /// server; kept across restarts). With --list: the suspensions in force (JSON).
    Suspend {
        #[command(flatten)]
        target: SuspendTarget,
        /// It lapses by itself after this long (e.g. 2h); without it, until `smtpgate resume`.
        #[arg(long = "for", value_name = "DURATION")]
        duration: Option<String>,
        /// A note for the list and the history.
        #[arg(long)]
        reason: Option<String>,
        /// List the suspensions in force instead.
        #[arg(long, conflicts_with_all = ["domain", "pool", "route", "stream", "duration", "reason"])]
        list: bool,
        #[command(flatten)]
        admin: AdminFlags,
    },
    /// End a suspension: what it held back is attempted at once (asks the running server).
    Resume {
        #[command(flatten)]
        target: SuspendTarget,
        #[command(flatten)]
        admin: AdminFlags,
    },
    /// The running server's configuration: `show` (secrets masked) or `reload` (as SIGHUP), over
    /// the admin address; `check-config FILE` checks a file without a server.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
        #[command(flatten)]
        admin: AdminFlags,
    },
    /// Ask the running server (its PID from the spool) to reload its configuration (SIGHUP).
    Reload {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// What a suspension names: exactly one of these.
#[derive(clap::Args)]
#[group(id = "what", multiple = false)]
struct SuspendTarget {
    /// A recipient domain.
    #[arg(long)]
    domain: Option<String>,
    /// A `[[pool]]`.
    #[arg(long)]
    pool: Option<String>,
    /// A `[[route]]` rule, by name.
    #[arg(long)]
    route: Option<String>,
    /// A `[[stream]]` (`default` for mail no rule put in one).
    #[arg(long)]
    stream: Option<String>,
}

impl SuspendTarget {
    /// The kind and value given, if one was.
    fn named(&self) -> Option<(&'static str, &str)> {
        [
            ("domain", &self.domain),
            ("pool", &self.pool),
            ("route", &self.route),
            ("stream", &self.stream),
        ]
        .into_iter()
        .find_map(|(kind, value)| Some((kind, value.as_deref()?)))
    }
}

/// How to reach the running server's admin address, as for `smtpgate queue`.
#[derive(clap::Args)]
struct AdminFlags {
    /// The server's configuration file (where its admin address and token are).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// The admin address, when the configuration's is port 0.
    #[arg(long, global = true)]
    admin: Option<std::net::SocketAddr>,
    /// The admin token's file (default: `admin.token_file`, or `admin.token` in the spool).
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
}

impl AdminFlags {
    fn client(self) -> anyhow::Result<AdminClient> {
        let args = AdminArgs {
            admin: self.admin,
            token_file: self.token_file,
        };
        AdminClient::new(&load_or_builtin(self.config)?, args)
    }
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// The configuration the server runs (JSON), every secret masked.
    Show,
    /// Reload the server's configuration file, as SIGHUP does; says why if it is refused.
    Reload,
}

#[derive(Subcommand)]
enum QuarantineCmd {
    /// List entries (JSON).
    List,
    /// Print a quarantined message.
    Show { id: String },
    /// Delete an entry.
    Delete { id: String },
    /// Deliver an entry as if it had passed (asks the running server on its admin address).
    Release {
        id: String,
        /// The admin address, when the configuration's is port 0.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
}

#[derive(Subcommand)]
enum QueueCmd {
    /// List queued messages, oldest first (columns, or --json).
    List {
        #[command(flatten)]
        filter: QueueFilter,
        #[arg(long)]
        json: bool,
    },
    /// One message's envelope, recipients, attempts and last reply (JSON).
    Show { id: String },
    /// The message as stored.
    Cat { id: String },
    /// Try now instead of at the next retry.
    Retry(QueueTarget),
    /// Return to the sender with a DSN.
    Bounce {
        #[command(flatten)]
        target: QueueTarget,
        /// Said in the DSN.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Drop without a DSN.
    Delete(QueueTarget),
    /// Deliver nothing until released (kept across restarts).
    Hold(QueueTarget),
    /// Deliver a held message now.
    Release(QueueTarget),
}

/// Which messages: every condition given must hold.
#[derive(clap::Args)]
struct QueueFilter {
    /// A pending recipient's domain.
    #[arg(long)]
    domain: Option<String>,
    #[arg(long)]
    sender: Option<String>,
    /// A pending recipient.
    #[arg(long)]
    recipient: Option<String>,
    /// Queued at least this long (e.g. 1h).
    #[arg(long)]
    older_than: Option<String>,
    /// queued, deferred or held.
    #[arg(long)]
    state: Option<String>,
}

/// One message by id, or every message the filters (or --all) take.
#[derive(clap::Args)]
struct QueueTarget {
    id: Option<String>,
    /// Every message in the queue (a bulk action needs a filter otherwise).
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    filter: QueueFilter,
}

#[derive(Subcommand)]
enum SuppressionCmd {
    /// List suppressed addresses (JSON).
    List,
    /// Suppress an address (a manual entry).
    Add { address: String },
    /// Take an address off the list.
    Remove { address: String },
}

#[derive(Subcommand)]
enum ThrottleCmd {
    /// List the actions in force (JSON), with why and until when.
    List,
    /// Show one action. KEY is `<stream>/domain:<name>` or `<stream>/mx:<pattern>`, as listed.
    Show { key: String },
    /// Cancel an action: normal limits at once.
    Cancel { key: String },
    /// Change an action, or start one by hand (then --duration and what to do are needed).
    Set {
        key: String,
        /// Full strength for this long from now (e.g. 30m).
        #[arg(long)]
        duration: Option<String>,
        /// Suspend deliveries (or, with --suspend=false, stop suspending).
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        suspend: Option<bool>,
        /// The message rate times this (0 < F <= 1).
        #[arg(long)]
        rate_factor: Option<f64>,
        /// The connection limit times this (0 < F <= 1).
        #[arg(long)]
        connection_factor: Option<f64>,
        /// Back to normal linearly over this long after the full-strength period.
        #[arg(long)]
        recover: Option<String>,
        /// A note for the list and the log.
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand)]
enum RouteCmd {
    /// Show, without sending anything, where a message would go and why.
    Test {
        #[arg(long, short)]
        config: PathBuf,
        /// Envelope sender (empty for the null sender).
        #[arg(long)]
        from: String,
        /// Envelope recipient (repeat for several).
        #[arg(long, required = true)]
        to: Vec<String>,
        /// A header line such as "Subject: hi" (repeat for several).
        #[arg(long)]
        header: Vec<String>,
        /// A whole message file to route instead of --header lines.
        #[arg(long)]
        message: Option<PathBuf>,
        /// The client's IP address.
        #[arg(long)]
        client: Option<std::net::IpAddr>,
        /// The authenticated user.
        #[arg(long)]
        user: Option<String>,
        /// The listener the message arrives on (default: the first).
        #[arg(long)]
        listener: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Serve { config } => serve(config, cli.log_format),
        Cmd::CheckConfig { file } => check_config(&file),
        Cmd::Passwd => passwd(),
        Cmd::Route {
            command:
                RouteCmd::Test {
                    config,
                    from,
                    to,
                    header,
                    message,
                    client,
                    user,
                    listener,
                },
        } => route_test(&config, from, to, header, message, client, user, listener),
        Cmd::Reload { config } => signal_reload(config),
        Cmd::Suspend {
            target,
            duration,
            reason,
            list,
            admin,
        } => suspend(admin, target, duration, reason, list),
        Cmd::Resume { target, admin } => resume(admin, target),
        Cmd::Config { command, admin } => config_cmd(admin, command),
        Cmd::Quarantine {
            config,
            token_file,
            command,
        } => quarantine(config, token_file, command),
        Cmd::Suppression { admin, command } => suppression(admin, command),
        Cmd::Throttle { admin, command } => throttle(admin, command),
        Cmd::Trace {
            query,
            since,
            json,
            admin,
        } => trace(admin, &query, since, json),
        Cmd::Queue { admin, command } => queue(admin, command),
        Cmd::Stats {
            admin,
            by,
            since,
            bucket,
            json,
            all_nodes,
        } => stats(admin, by, &since, &bucket, json, all_nodes),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("smtpgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SMTPGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let colour = colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Whether log lines get ANSI colours: only on a terminal, and not when `NO_COLOR` is set to
/// anything but the empty string (no-color.org). A file, a pipe or journald gets plain text.
fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn serve(path: Option<PathBuf>, format: LogFormat) -> anyhow::Result<ExitCode> {
    let config = match &path {
        Some(p) => Config::load(p)?,
        None => Config::builtin(),
    };
    init_logging(format);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    runtime.block_on(async move {
        let mut server = Server::start(config).await?;
        // Handlers first: a signal sent as soon as the server says it is ready must not kill it.
        let signals = Signals::install()?;
        announce(&server, path.is_none())?;
        let pid_file = server.spool_dir.join("smtpgate.pid");
        std::fs::write(&pid_file, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write {}", pid_file.display()))?;
        serve_until_stopped(&mut server, path.as_deref(), signals).await;
        tracing::info!("shutting down");
        server.shutdown().await;
        let _ = std::fs::remove_file(&pid_file);
        Ok(ExitCode::SUCCESS)
    })
}

/// Says on standard output what the server listens on and where it spools.
fn announce(server: &Server, builtin: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if builtin {
        writeln!(
            out,
            "smtpgate: no --config given, running the built-in default configuration"
        )?;
    }
    for l in &server.listeners() {
        writeln!(
            out,
            "smtpgate listening: listener={} address={} tls={}",
            l.name, l.addr, l.tls
        )?;
    }
    if let (Some(a), Some(file)) = (server.admin, &server.admin_token_file) {
        let file = std::path::absolute(file)?;
        writeln!(out, "smtpgate admin: address={a} token_file={}", file.display())?;
    }
    writeln!(
        out,
        "smtpgate spool: dir={} recovered={}",
        server.spool_dir.display(),
        server.recovered
    )?;
    writeln!(out, "smtpgate ready")?;
    out.flush()
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Runs until SIGTERM or SIGINT; SIGHUP and `POST /api/v1/config/reload` reload the
/// configuration file, through the one [`reload`].
async fn serve_until_stopped(server: &mut Server, path: Option<&std::path::Path>, mut s: Signals) {
    let mut requests = server.reload_requests();
    loop {
        tokio::select! {
            _ = s.term.recv() => return,
            _ = s.int.recv() => return,
            _ = s.hup.recv() => {
                let _ = reload(server, path).await;
            }
            Some(request) = next_request(&mut requests) => {
                let outcome = reload(server, path).await;
                request.answer(outcome);
            }
        }
    }
}

/// The next reload asked for on the admin address (never, without an admin address).
async fn next_request(requests: &mut Option<tokio::sync::mpsc::Receiver<ReloadRequest>>) -> Option<ReloadRequest> {
    match requests {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Reads the configuration file again and switches to it; on any mistake the old one stays and
/// the answer says why.
async fn reload(server: &mut Server, path: Option<&std::path::Path>) -> Result<(), ReloadRefused> {
    let Some(path) = path else {
        tracing::info!("reload: running the built-in configuration, nothing to reload");
        return Err(ReloadRefused::BuiltIn);
    };
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            for issue in &e.errors {
                let file = issue
                    .file
                    .as_deref()
                    .map(|f| f.display().to_string())
                    .unwrap_or_default();
                tracing::error!(file = %file, key = %issue.key, "{}", issue.message);
            }
            tracing::error!(
                errors = e.errors.len(),
                "reload refused: the configuration has errors; the old one stays"
            );
            return Err(ReloadRefused::Invalid(e.to_string()));
        }
    };
    match server.reload(config).await {
        Ok(()) => {
            for l in server.listeners() {
                println!(
                    "smtpgate listening: listener={} address={} tls={}",
                    l.name, l.addr, l.tls
                );
            }
            println!("smtpgate reloaded");
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "reload refused; the old configuration stays");
            Err(ReloadRefused::Invalid(e))
        }
    }
}

fn check_config(file: &std::path::Path) -> anyhow::Result<ExitCode> {
    // The filters' own options are checked by building them, as start-up does, and their
    // mistakes are listed with those of every file the configuration reads.
    let checked = Config::load_checking(file, |config, issues| {
        smtpgate::filter::Filters::check(config, issues);
    });
    match checked {
        Ok(_) => {
            println!("{}: OK", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn passwd() -> anyhow::Result<ExitCode> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password")?;
    let password = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!password.is_empty(), "empty password");
    let hash = smtpgate::session::hash_password(password).map_err(anyhow::Error::msg)?;
    println!("{hash}");
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
fn route_test(
    config: &std::path::Path,
    from: String,
    to: Vec<String>,
    headers: Vec<String>,
    message: Option<PathBuf>,
    client: Option<std::net::IpAddr>,
    user: Option<String>,
    listener: Option<String>,
) -> anyhow::Result<ExitCode> {
    let config = std::sync::Arc::new(Config::load(config)?);
    let message = match message {
        Some(path) => Some(std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?),
        None => None,
    };
    let input = smtpgate::route::dryrun::DryRun {
        from,
        to,
        headers,
        message,
        client,
        user,
        listener,
    };
    let report = smtpgate::route::dryrun::run(config, &input).map_err(anyhow::Error::msg)?;
    print!("{report}");
    Ok(ExitCode::SUCCESS)
}

/// Sends SIGHUP to the server whose PID file is in the configured spool directory.
fn signal_reload(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let config = load_or_builtin(config)?;
    let pid_file = config.spool.dir.join("smtpgate.pid");
    let text = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("cannot read {} (is smtpgate running?)", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a PID", pid_file.display()))?;
    let target = rustix::process::Pid::from_raw(pid).context("not a process id")?;
    rustix::process::kill_process(target, rustix::process::Signal::HUP)
        .with_context(|| format!("cannot signal process {pid}"))?;
    println!("smtpgate: asked process {pid} to reload its configuration");
    Ok(ExitCode::SUCCESS)
}

fn load_or_builtin(config: Option<PathBuf>) -> anyhow::Result<Config> {
    Ok(match &config {
        Some(p) => Config::load(p)?,
        None => Config::builtin(),
    })
}

fn quarantine(
    config: Option<PathBuf>,
    token_file: Option<PathBuf>,
    command: QuarantineCmd,
) -> anyhow::Result<ExitCode> {
    let config = load_or_builtin(config)?;
    let spool = std::path::absolute(&config.spool.dir)?;
    let q = smtpgate::quarantine::Quarantine::open(&spool)?;
    match command {
        QuarantineCmd::List => print!("{}", smtpgate::server::quarantine_api::entries_json(&q.list()?)),
        QuarantineCmd::Show { id } => {
            let entry = q.entry(&id)?;
            eprintln!(
                "quarantined by {} ({}) at {}",
                entry.filter, entry.reason, entry.quarantined_at
            );
            std::io::stdout().write_all(&q.message(&id)?)?;
        }
        QuarantineCmd::Delete { id } => {
            q.delete(&id)?;
            println!("deleted {id}");
        }
        QuarantineCmd::Release { id, admin } => {
            let client = AdminClient::new(&config, AdminArgs { admin, token_file })?;
            let path = format!("/api/v1/quarantine/{}/release", url_encode(&id, ""));
            println!("{}", client.done("POST", &path)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn suppression(admin: AdminFlags, command: SuppressionCmd) -> anyhow::Result<ExitCode> {
    let client = admin.client()?;
    let path = |address: &str| format!("/api/v1/suppression/{}", url_encode(address, "@+"));
    match command {
        SuppressionCmd::List => print!("{}", client.request("GET", "/api/v1/suppression")?),
        SuppressionCmd::Add { address } => println!("{}", client.done("PUT", &path(&address))?),
        SuppressionCmd::Remove { address } => println!("{}", client.done("DELETE", &path(&address))?),
    }
    Ok(ExitCode::SUCCESS)
}

fn throttle(admin: AdminFlags, command: ThrottleCmd) -> anyhow::Result<ExitCode> {
    let client = admin.client()?;
    let path = |key: &str| format!("/api/v1/throttles/{}", url_encode(key, "/:*"));
    let body = match command {
        ThrottleCmd::List => client.request("GET", "/api/v1/throttles")?,
        ThrottleCmd::Show { key } => client.request("GET", &path(&key))?,
        ThrottleCmd::Cancel { key } => client.done("DELETE", &path(&key))? + "\n",
        ThrottleCmd::Set {
            key,
            duration,
            suspend,
            rate_factor,
            connection_factor,
            recover,
            reason,
        } => {
            let params: Vec<(&str, Option<String>)> = vec![
                ("duration", duration),
                ("suspend", suspend.map(|b| b.to_string())),
                ("rate_factor", rate_factor.map(|f| f.to_string())),
                ("connection_factor", connection_factor.map(|f| f.to_string())),
                ("recover", recover),
                ("reason", reason),
            ];
            let query: Vec<String> = params
                .into_iter()
                .filter_map(|(name, value)| Some(format!("{name}={}", url_encode(&value?, ""))))
                .collect();
            anyhow::ensure!(
                !query.is_empty(),
                "nothing to change: give --duration, --suspend, --rate-factor, ..."
            );
            client.request("PUT", &format!("{}?{}", path(&key), query.join("&")))?
        }
    };
    print!("{body}");
    Ok(ExitCode::SUCCESS)
}

/// `smtpgate suspend`: one suspension, or with `list` the list.
fn suspend(
    admin: AdminFlags,
    target: SuspendTarget,
    duration: Option<String>,
    reason: Option<String>,
    list: bool,
) -> anyhow::Result<ExitCode> {
    let client = admin.client()?;
    if list {
        print!("{}", client.request("GET", "/api/v1/suspend")?);
        return Ok(ExitCode::SUCCESS);
    }
    let (kind, value) = target
        .named()
        .context("name what to suspend: --domain, --pool, --route or --stream (or --list)")?;
    let mut body = serde_json::json!({ kind: value });
    if let Some(d) = duration {
        body["for"] = d.into();
    }
    if let Some(r) = reason {
        body["reason"] = r.into();
    }
    print!("{}", client.send("POST", "/api/v1/suspend", Some(body.to_string()))?);
    Ok(ExitCode::SUCCESS)
}

/// `smtpgate resume`.
fn resume(admin: AdminFlags, target: SuspendTarget) -> anyhow::Result<ExitCode> {
    let client = admin.client()?;
    let (kind, value) = target
        .named()
        .context("name what to resume: --domain, --pool, --route or --stream")?;
    let path = format!("/api/v1/suspend/{kind}/{}", url_encode(value, ""));
    print!("{}", client.request("DELETE", &path)?);
    Ok(ExitCode::SUCCESS)
}

/// `smtpgate config show|reload`.
fn config_cmd(admin: AdminFlags, command: ConfigCmd) -> anyhow::Result<ExitCode> {
    let client = admin.client()?;
    let body = match command {
        ConfigCmd::Show => client.request("GET", "/api/v1/config")?,
        ConfigCmd::Reload => client.request("POST", "/api/v1/config/reload")?,
    };
    print!("{body}");
    Ok(ExitCode::SUCCESS)
}

/// Asks the running server for the history of `query` and prints it oldest first: a timeline
/// (time, type, queue id, recipients, reply and server) or, with `json`, one event per line.
fn trace(admin: AdminFlags, query: &str, since: Option<String>, json: bool) -> anyhow::Result<ExitCode> {
    let client = admin.client()?;
    let mut path = format!("/api/v1/messages?order=asc&q={}", url_encode(query, "@"));
    if let Some(since) = since {
        path.push_str(&format!("&since={}", url_encode(&since, "")));
    }
    let events: Vec<serde_json::Value> = serde_json::from_str(&client.request("GET", &path)?)?;
    let mut out = std::io::stdout().lock();
    for e in &events {
        match json {
            true => writeln!(out, "{e}")?,
            false => writeln!(out, "{}", timeline_line(e))?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `smtpgate stats`: the API's report as a table, or as it came with `--json`.
fn stats(
    admin: AdminFlags,
    by: Option<String>,
    since: &str,
    bucket: &str,
    json: bool,
    all_nodes: bool,
) -> anyhow::Result<ExitCode> {
    let client = admin.client()?;
    let by = by.map(|b| format!("&by={}", url_encode(&b, ""))).unwrap_or_default();
    let (since, bucket) = (url_encode(since, ""), url_encode(bucket, ""));
    let nodes = if all_nodes { "&nodes=all" } else { "" };
    let body = client.request(
        "GET",
        &format!("/api/v1/stats?since={since}&bucket={bucket}{by}{nodes}"),
    )?;
    match json {
        true => print!("{body}"),
        false => print!("{}", smtpgate::stats::table(&serde_json::from_str(&body)?)),
    }
    Ok(ExitCode::SUCCESS)
}

/// One event as a line of a timeline.
fn timeline_line(e: &serde_json::Value) -> String {
    let text = |key: &str| e.get(key).and_then(|v| v.as_str()).unwrap_or("-").to_owned();
    let at = smtpgate::datetime::rfc3339_ms(e.get("at").and_then(|v| v.as_u64()).unwrap_or(0));
    let rcpts: Vec<&str> = e
        .get("recipients")
        .and_then(|r| r.as_array())
        .map(|r| r.iter().filter_map(|a| a.as_str()).collect())
        .unwrap_or_default();
    let reply = e.get("reply").map(|r| {
        let part = |k: &str| r.get(k).map(|v| v.to_string().trim_matches('"').to_owned());
        [part("code"), part("status"), part("text")]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ")
    });
    let mut line = format!("{at}  {:<11} {}  {}", text("type"), text("queue_id"), rcpts.join(","));
    let category = e
        .get("category")
        .and_then(|c| c.as_str())
        .map(|c| format!("category={c}"));
    for extra in [
        reply,
        category,
        e.get("server").and_then(|s| s.as_str()).map(|s| format!("server={s}")),
    ] {
        line.extend(extra.map(|x| format!("  {x}")));
    }
    line
}

fn queue(admin: AdminFlags, command: QueueCmd) -> anyhow::Result<ExitCode> {
    let client = admin.client()?;
    let (action, target, reason) = match command {
        QueueCmd::List { filter, json } => {
            let body = client.request("GET", &format!("/api/v1/queue?{}", filter.query().join("&")))?;
            let shown = if json {
                body
            } else {
                smtpgate::server::queue_api::table(&body).map_err(anyhow::Error::msg)?
            };
            print!("{shown}");
            return Ok(ExitCode::SUCCESS);
        }
        QueueCmd::Show { id } => {
            print!(
                "{}",
                client.request("GET", &format!("/api/v1/queue/{}", url_encode(&id, "")))?
            );
            return Ok(ExitCode::SUCCESS);
        }
        QueueCmd::Cat { id } => {
            let path = format!("/api/v1/queue/{}/message", url_encode(&id, ""));
            print!("{}", client.request("GET", &path)?);
            return Ok(ExitCode::SUCCESS);
        }
        QueueCmd::Retry(t) => ("retry", t, None),
        QueueCmd::Bounce { target, reason } => ("bounce", target, reason),
        QueueCmd::Delete(t) => ("delete", t, None),
        QueueCmd::Hold(t) => ("hold", t, None),
        QueueCmd::Release(t) => ("release", t, None),
    };
    let mut query = target.filter.query();
    query.extend(reason.map(|r| format!("reason={}", url_encode(&r, ""))));
    query.extend(target.all.then(|| "all=true".to_string()));
    // One message: POST /queue/{id}/{action}; every message the filters take: POST /queue/{action}.
    let path = match &target.id {
        Some(id) => format!("/api/v1/queue/{}/{action}?", url_encode(id, "")),
        None => format!("/api/v1/queue/{action}?"),
    };
    let body = client.request("POST", &format!("{path}{}", query.join("&")))?;
    let n = serde_json::from_str::<serde_json::Value>(&body).map_or(0, |v| v["messages"].as_u64().unwrap_or(0));
    println!("{action}: {n} message(s)");
    Ok(ExitCode::SUCCESS)
}

impl QueueFilter {
    /// The filters as query parameters.
    fn query(&self) -> Vec<String> {
        [
            ("domain", &self.domain),
            ("sender", &self.sender),
            ("recipient", &self.recipient),
            ("older_than", &self.older_than),
            ("state", &self.state),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some(format!("{k}={}", url_encode(v.as_ref()?, ""))))
        .collect()
    }
}

/// Percent-encodes `text` for a URL, leaving unreserved characters and those in `keep` as they are.
fn url_encode(text: &str, keep: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.as_bytes().contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What the command line says about the admin address: `--admin` and `--token-file`.
struct AdminArgs {
    admin: Option<std::net::SocketAddr>,
    token_file: Option<PathBuf>,
}

/// The running server's admin address and the token it wants.
struct AdminClient {
    addr: std::net::SocketAddr,
    token: String,
}

impl AdminClient {
    /// The address from `--admin` or the configuration; the token from `--token-file`, or where
    /// the server keeps it for this configuration (`admin.token_file`, or the spool's).
    fn new(config: &Config, args: AdminArgs) -> anyhow::Result<AdminClient> {
        let addr = args
            .admin
            .or(config.admin.as_ref().map(|a| a.address))
            .context("no admin address configured")?;
        let file = match (args.token_file, &config.admin) {
            (Some(file), _) => file,
            (None, Some(admin)) => {
                smtpgate::server::admin_auth::token_path(admin, &std::path::absolute(&config.spool.dir)?)
            }
            (None, None) => std::path::absolute(&config.spool.dir)?.join(smtpgate::server::admin_auth::TOKEN_FILE),
        };
        let token = smtpgate::server::admin_auth::read_token(&file)
            .map_err(anyhow::Error::msg)
            .context("no admin token (give --config of the running server, or --token-file)")?;
        Ok(AdminClient { addr, token })
    }

    /// One request with the token, over HTTP/1.1 with hyper on a small runtime of its own;
    /// returns the body, or an error with the body's text for a non-2xx status.
    fn request(&self, method: &str, path: &str) -> anyhow::Result<String> {
        self.send(method, path, None)
    }

    /// As [`AdminClient::request`], with a JSON `body`.
    fn send(&self, method: &str, path: &str, body: Option<String>) -> anyhow::Result<String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the runtime")?;
        let (status, body) = runtime.block_on(self.exchange(method, path, body))?;
        let body = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            // The API's errors are `{"error": "..."}`; anything else is shown as it came.
            let error = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned));
            anyhow::bail!("{}", error.unwrap_or_else(|| body.trim().to_owned()));
        }
        Ok(body)
    }

    /// An action's request; what it did, in words (the answer's `message`).
    fn done(&self, method: &str, path: &str) -> anyhow::Result<String> {
        let body = self.request(method, path)?;
        let value: serde_json::Value = serde_json::from_str(&body).context("the answer is not JSON")?;
        Ok(value["message"].as_str().unwrap_or(body.trim()).to_owned())
    }

    /// Sends the request; the status and body of the answer. Connecting may take 10 s, the
    /// answer 30 s more.
    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<(hyper::StatusCode, bytes::Bytes)> {
        use http_body_util::{BodyExt, Full};
        use hyper::header::{AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
        use std::time::Duration;
        let addr = self.addr;
        let unreachable = || format!("cannot reach the admin address {addr} (is smtpgate running?)");
        let tcp = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            .with_context(unreachable)?;
        // The address connected to, so an admin address of 0.0.0.0 is named as the server sees it.
        let host = tcp.peer_addr().unwrap_or(addr);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .with_context(unreachable)?;
        // Ends with the runtime, when the command is done.
        tokio::spawn(conn);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, host.to_string())
            .header(AUTHORIZATION, format!("Bearer {}", self.token))
            .header(CONNECTION, "close");
        let body = bytes::Bytes::from(body.unwrap_or_default());
        if !body.is_empty() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .header(CONTENT_LENGTH, body.len().to_string())
            .body(Full::new(body))?;
        let answer = async {
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        };
        tokio::time::timeout(Duration::from_secs(30), answer)
            .await
            .with_context(|| format!("no answer from the admin address {addr} within 30 s"))?
    }
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
        assert!(!colour(false, Some("1".into())));
    }
}
