//! The `shardhook` binary: parses arguments, sets up logging, and calls the library.

mod demo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use shardhook_simulator::{SimConfig, Simulator, DEFAULT_TOKEN};

use shardhook::app::{App, StartOptions};
use shardhook::{Config, Ed25519Key, SigningKey};
use tokio_util::sync::CancellationToken;
use tracing::Level;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Parser)]
#[command(
    name = "shardhook",
    version,
    about = "Keeps a Discord bot's gateway shards connected and forwards every event to serverless handlers."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the router.
    Run {
        /// Config file (default: shardhook.toml if present).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate the config and print it resolved, secrets redacted.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Serve a local Discord double (REST and gateway) for handler development and tests.
    Simulate {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Recommended shard count.
        #[arg(long, default_value_t = 1)]
        shards: u32,
        /// Guilds in all.
        #[arg(long, default_value_t = 2)]
        guilds: u32,
        /// Traffic events per second per connected shard (below 1 too: 0.2 is one every 5 s).
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Shards 0..N carry --hot-rate instead (busy guilds crowd on a few shards).
        #[arg(long, default_value_t = 0)]
        hot_shards: u32,
        /// Traffic events per second on each of the --hot-shards.
        #[arg(long, default_value_t = 0.0)]
        hot_rate: f64,
        /// Traffic at random (exponential gaps of the rate's mean) instead of on a beat.
        #[arg(long)]
        poisson: bool,
        /// Session starts a day (`session_start_limit.total`); big bots have more than 1000.
        #[arg(long, default_value_t = 1000)]
        session_start_limit: u32,
        /// The bot token the double accepts.
        #[arg(long, env = "SHARDHOOK_SIMULATE_TOKEN", default_value = DEFAULT_TOKEN, hide_env_values = true)]
        token: String,
        #[arg(long, default_value_t = 1)]
        max_concurrency: u32,
        /// HELLO's heartbeat interval in milliseconds.
        #[arg(long, default_value_t = 41_250)]
        heartbeat_interval_ms: u64,
    },
    /// Run the double, the router and two local verifying endpoints in one process, with
    /// faults, and print a summary that accounts for every event. No token or config needed.
    Demo,
    /// Print a new signing secret (`whsec_...`), or with --ed25519 a new Ed25519 key pair for
    /// Carbon endpoints.
    Keygen {
        /// Print an Ed25519 key pair instead: the private key in PKCS#8 PEM (for
        /// signing.ed25519_private_key or SHARDHOOK_ED25519_PRIVATE_KEY), then the public key
        /// in hex (a Carbon app's publicKey).
        #[arg(long)]
        ed25519: bool,
    },
    /// Ask a running router's control API whether it is up (`GET /healthz`): exit 0 when it
    /// answers 200 within 5 s, else 1 with the reason. For container health checks, which
    /// have no HTTP client of their own.
    Health {
        /// The control API's health URL.
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
    /// Inspect the routers sharing the bot through Redis (`[cluster]`).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Send a dead-letter file's batches again. The file is renamed to FILE.replayed first;
    /// batches that fail again are dead-lettered anew in state.dir.
    Replay {
        file: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Print the live routers, how many shards each holds, every shard's lease (holder,
    /// fencing token, time left) and checkpoint seq, as Redis has them.
    Status {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Shards to list (default: discord.shards' total, else 1).
        #[arg(long)]
        shards: Option<u32>,
    },
    /// Move every router's dead letters from Redis to FILE (appended, the dead-letter file's
    /// format), for `shardhook replay FILE`.
    DeadLetters {
        /// Where they go.
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = match cli.command {
        Command::Demo => "error",
        _ => "info",
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // `RUST_LOG`'s filter outermost: its most verbose level is the process's (and
                // the `log` crate's) maximum, so the libraries' trace and debug call sites cost
                // nothing unless asked for. Outside, the capped filter's unknown maximum made
                // every one of them a dynamic check (2-3% of a busy router's CPU).
                .with_filter(Capped)
                .with_filter(log_filter(default)),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Run { config } => {
            let config = load(config)?;
            raise_open_file_limit();
            // One token stops everything: SIGTERM or Ctrl-C cancels it.
            let shutdown = CancellationToken::new();
            let signal = shutdown.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                signal.cancel();
            });
            let app = App::start(config, shutdown, StartOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            app.run().await.map_err(|e| e.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cluster {
            command: ClusterCommand::Status { config, shards },
        } => {
            let config = load(config)?;
            let shards = shards.unwrap_or(match &config.discord.shards {
                shardhook::config::ShardsConfig::Explicit { total, .. } => *total,
                shardhook::config::ShardsConfig::Auto => 1,
            });
            let report = shardhook::cluster::status::report(&config, shards)
                .await
                .map_err(|e| e.to_string())?;
            print!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Cluster {
            command: ClusterCommand::DeadLetters { out, config },
        } => {
            let config = load(config)?;
            let done = shardhook::cluster::dead_letters::export(&config, &out)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "moved {} dead letter(s) from Redis to {}; send them again with `shardhook replay {}`",
                done.moved,
                out.display(),
                out.display()
            );
            if done.refused > 0 {
                eprintln!(
                    "warning: {} record(s) in Redis failed their MAC (not written by a router of this bot) and went to {}, not to the file replay reads",
                    done.refused,
                    shardhook::cluster::dead_letters::refused_path(&out).display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Health { url } => {
            let client = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .no_proxy()
                .build()
                .map_err(|e| e.to_string())?;
            match client.get(&url).send().await {
                Ok(answer) if answer.status() == reqwest::StatusCode::OK => Ok(ExitCode::SUCCESS),
                Ok(answer) => Err(format!("{url} answered {}", answer.status())),
                Err(e) => Err(format!("{url} did not answer: {e}")),
            }
        }
        Command::Keygen { ed25519: false } => {
            println!("{}", SigningKey::generate());
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { ed25519: true } => {
            let (private, public) = Ed25519Key::generate();
            print!("{private}");
            println!("public key (hex, a Carbon app's publicKey): {public}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { file, config } => {
            let config = load(config)?;
            let pipeline = shardhook::Pipeline::new(&config).map_err(|e| e.to_string())?;
            let letters = shardhook::read_dead_letters(&file).map_err(|e| e.to_string())?;
            let mut moved = file.clone().into_os_string();
            moved.push(".replayed");
            std::fs::rename(&file, &moved).map_err(|e| {
                format!(
                    "failed to move {} aside before replaying: {e}",
                    file.display()
                )
            })?;
            let total = letters.len();
            let replayed = pipeline.replay(letters).await;
            let kept = pipeline.dead_letter_path().display();
            for refused in &replayed.refused {
                match &refused.not_kept {
                    None => eprintln!(
                        "error: {} record {}: not replayed: {}; kept as it was in {kept}",
                        file.display(),
                        refused.record,
                        refused.reason
                    ),
                    Some(e) => eprintln!(
                        "error: {} record {}: not replayed: {}; it is still in {} ({e})",
                        file.display(),
                        refused.record,
                        refused.reason,
                        moved.to_string_lossy()
                    ),
                }
            }
            println!(
                "replayed {} of {total} batch(es) from {}; {} failed again and {} were refused, all kept in {kept}",
                replayed.delivered,
                file.display(),
                replayed.failed,
                replayed.refused.len(),
            );
            Ok(if replayed.delivered == total {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Check { config } => {
            let config = load(config)?;
            config.token().map_err(|e| e.to_string())?;
            config.signing_key().map_err(|e| e.to_string())?;
            if config.endpoints.is_empty() {
                return Err(shardhook::config::ConfigError::NoEndpoints.to_string());
            }
            print!("{}", config.to_redacted_toml());
            if let Some(key) = &config.signing.ed25519_private_key {
                // Only the public half, which the Carbon app is configured with.
                println!(
                    "\n# signing.ed25519_private_key's public key (a Carbon app's publicKey): {}",
                    key.public_hex()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate {
            listen,
            shards,
            guilds,
            rate,
            hot_shards,
            hot_rate,
            poisson,
            session_start_limit,
            token,
            max_concurrency,
            heartbeat_interval_ms,
        } => {
            let config = SimConfig {
                token,
                shards,
                guilds,
                rate,
                hot_shards,
                hot_rate,
                poisson,
                session_start_limit,
                max_concurrency,
                heartbeat_interval: Duration::from_millis(heartbeat_interval_ms),
                ..SimConfig::default()
            };
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("failed to listen on {listen}: {e}"))?;
            let sim = Simulator::serve(listener, config, shutdown_signal())
                .map_err(|e| format!("failed to start the simulator: {e}"))?;
            println!("Discord simulator ready: api_url = \"{}\"", sim.api_url());
            shutdown_signal().await;
            let violations = sim.observed(|o| o.violations.clone());
            for v in &violations {
                eprintln!("rule broken: {v}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo => {
            let report = demo::run(demo::DemoOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            println!("{report}");
            Ok(
                if report.exactly_once() && report.all_verified() && report.resumes > 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                },
            )
        }
    }
}

/// Libraries that print raw frames or headers (and so the token in IDENTIFY, RESUME or
/// `Authorization`) below info.
const CAPPED: [&str; 15] = [
    "tungstenite",
    "tokio_tungstenite",
    "hyper",
    "hyper_util",
    "reqwest",
    "h2",
    "axum",
    "rustls",
    "tokio_rustls",
    // Logs each bucket's path at debug: webhook and interaction tokens are in paths.
    "twilight_http_ratelimiting",
    // The AWS SDK logs credentials' key ids and request signing at trace.
    "aws_config",
    "aws_credential_types",
    "aws_runtime",
    "aws_sigv4",
    "aws_smithy_*",
];

/// `RUST_LOG`, or `default` when it is unset or unreadable.
fn log_filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// Drops events below info from the `CAPPED` libraries and their modules, whatever `RUST_LOG`
/// says. A directive added to the `EnvFilter` would not do: a more specific one in `RUST_LOG`
/// (`tungstenite::protocol=trace`) wins over it. This filter is applied beside it, so both must
/// let an event through. It decides by call site, once per call site.
struct Capped;

impl Capped {
    fn allows(meta: &tracing::Metadata<'_>) -> bool {
        *meta.level() <= Level::INFO || !is_capped(meta.target())
    }
}

impl<S> tracing_subscriber::layer::Filter<S> for Capped {
    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        Capped::allows(meta)
    }

    fn callsite_enabled(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        match Capped::allows(meta) {
            true => tracing::subscriber::Interest::always(),
            false => tracing::subscriber::Interest::never(),
        }
    }
}

/// Whether `target` is one of the `CAPPED` libraries or a module of one.
fn is_capped(target: &str) -> bool {
    CAPPED.iter().any(|name| match name.strip_suffix('*') {
        // A family of crates: `aws_smithy_*` is every crate named so, and their modules.
        Some(prefix) => target.starts_with(prefix),
        None => target
            .strip_prefix(name)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::")),
    })
}

/// Raises the soft limit on open files to the hard limit: shards, endpoint connections, the
/// spool, checkpoints and the control API all hold descriptors, and a low default soft limit
/// (1024 on many systems) runs out long before the hard one.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open file limit"),
        Err(e) => tracing::warn!("could not raise the open file limit: {e}"),
    }
}

fn load(path: Option<PathBuf>) -> Result<Config, String> {
    Config::load(path.as_deref(), std::env::vars()).map_err(|e| e.to_string())
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::is_capped;

    #[test]
    fn capped_libraries_include_their_modules_but_not_lookalikes() {
        assert!(is_capped("tungstenite"));
        assert!(is_capped("tungstenite::protocol"));
        assert!(is_capped("hyper_util::client::legacy"));
        assert!(!is_capped("tungstenite_extra"));
        assert!(!is_capped("shardhook::gateway::shard"));
        assert!(is_capped("twilight_http_ratelimiting::actor"));
        assert!(is_capped("aws_smithy_runtime::client::orchestrator"));
        assert!(is_capped("aws_smithy_http"));
        assert!(is_capped("aws_config::default_provider"));
    }
}
