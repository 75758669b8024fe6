//! shardhook's benchmark harness (issue 7). `bench/run` is the documented entry point.
//!
//! # Layout
//! - `frames`: the event mix, pre-built and pre-compressed as `zlib-stream` and `zstd-stream`
//!   frames.
//! - `blast`: the load source, a minimal gateway replaying those frames over N shards.
//! - `sink`: the endpoint, answering 204 and recording arrivals.
//! - `contestants`: what runs in the child process being measured.
//! - `distant`: the bot users run (issue 18), its own parent and children.
//! - `rest`: the REST proxy's added latency and CPU per request (issue 21).
//!
//! The parent runs the source and the sink; each contestant runs alone in a child process, so
//! the CPU seconds and RSS read from `/proc/<pid>` are the contestant's own.

mod blast;
mod contestants;
mod distant;
mod frames;
mod rest;
mod sink;

use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use blast::Blaster;
use frames::{compression_named, Load, KINDS};
use shardhook::config::Compression;
use sink::Sink;

/// Serves `app` on `listener` (the source and the sink) with Nagle off, as a real gateway and
/// endpoint would have it: with it on, a small frame written while the previous one waits for
/// its (delayed) ACK is held back for up to 40 ms, which put a ~20 ms p99 on every contestant
/// alike.
async fn serve_without_nagle(listener: tokio::net::TcpListener, app: axum::Router) {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let _ = axum::serve(listener, app).await;
}

struct Options {
    shards: u32,
    events: usize,
    idle_shards: u32,
    latency: bool,
    /// Peak rounds per contestant; the table gives medians, and ratios per repetition.
    rounds: usize,
    /// Pace with a thread of its own instead of tokio's 1 ms timer (see `Blaster::go`).
    fine_pacing: bool,
    /// Only contestants whose name contains this, or one of these comma-separated names (to
    /// profile one, or compare a few).
    only: Option<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: shardhook-bench run [--shards N] [--events PER_SHARD] [--idle-shards N] [--rounds N] [--no-latency] [--fine-pacing] [--only NAME[,NAME..]]\n       shardhook-bench distant [--shards N[,N..]] [--rate EVENTS_PER_S] [--delay-ms MS] [--warmup S] [--seconds S] [--loads skewed,uniform] [--contestants default|twilight|max_events=N+max_in_flight=N+checkpoint_interval_ms=N+compression=zlib-stream|zstd-stream|none+http2=auto|never|always,...]\n       shardhook-bench rest [--rate REQUESTS_PER_S] [--warmup S] [--seconds S]"
    );
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match args.first().map(String::as_str) {
        Some("contestant") => runtime.block_on(child(&args[1..])),
        Some("distant") => {
            let mut o = distant::Options {
                shards: 1000,
                rate: 3000.0,
                hot_fraction: 0.01,
                hot_share: 0.2,
                delay: Duration::from_millis(50),
                warmup: Duration::from_secs(10),
                window: Duration::from_secs(60),
                contestants: vec![
                    distant::Contestant::Shardhook {
                        settings: String::new(),
                    },
                    distant::Contestant::Twilight,
                ],
            };
            // `--shards 1000,5000` runs the whole table once per shard count, in one run, and
            // `--loads skewed,uniform` once per load: 1% of the shards carrying 20% of the
            // events, or every shard at the same rate.
            let mut shard_counts = vec![o.shards];
            let mut loads = vec!["skewed".to_owned(), "uniform".to_owned()];
            let mut it = args[1..].iter();
            while let Some(flag) = it.next() {
                let mut value = || it.next().cloned().unwrap_or_else(|| usage());
                let number = |v: String| v.parse::<f64>().unwrap_or_else(|_| usage());
                match flag.as_str() {
                    "--shards" => {
                        shard_counts = value()
                            .split(',')
                            .map(|n| number(n.to_owned()) as u32)
                            .collect()
                    }
                    "--rate" => o.rate = number(value()),
                    "--loads" => loads = value().split(',').map(str::to_owned).collect(),
                    "--delay-ms" => o.delay = Duration::from_millis(number(value()) as u64),
                    "--warmup" => o.warmup = Duration::from_secs_f64(number(value())),
                    "--seconds" => o.window = Duration::from_secs_f64(number(value())),
                    // Contestants in order: `default`, `twilight`, or shardhook settings
                    // (`max_events=100+max_in_flight=512`).
                    "--contestants" => {
                        o.contestants = value()
                            .split(',')
                            .map(|c| match c {
                                "twilight" => distant::Contestant::Twilight,
                                "default" => distant::Contestant::Shardhook {
                                    settings: String::new(),
                                },
                                settings => distant::Contestant::Shardhook {
                                    settings: settings.to_owned(),
                                },
                            })
                            .collect()
                    }
                    _ => usage(),
                }
            }
            let secret = shardhook::SigningKey::generate();
            for shards in shard_counts {
                for load in &loads {
                    let hot_share = match load.as_str() {
                        "skewed" => o.hot_share,
                        "uniform" => 0.0,
                        _ => usage(),
                    };
                    let o = distant::Options {
                        shards,
                        hot_share,
                        ..o.clone()
                    };
                    runtime.block_on(distant::run(o, &secret));
                }
            }
        }
        Some("rest") => {
            let mut o = rest::Options {
                rate: 40.0,
                warmup: Duration::from_secs(3),
                window: Duration::from_secs(30),
            };
            let mut it = args[1..].iter();
            while let Some(flag) = it.next() {
                let mut value = || {
                    it.next()
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or_else(|| usage())
                };
                match flag.as_str() {
                    "--rate" => o.rate = value(),
                    "--warmup" => o.warmup = Duration::from_secs_f64(value()),
                    "--seconds" => o.window = Duration::from_secs_f64(value()),
                    _ => usage(),
                }
            }
            let secret = shardhook::SigningKey::generate();
            runtime.block_on(rest::run(o, &secret));
        }
        Some("run") => {
            let mut o = Options {
                shards: 4,
                events: 100_000,
                idle_shards: 1000,
                latency: true,
                rounds: 5,
                only: None,
                fine_pacing: false,
            };
            let mut it = args[1..].iter();
            while let Some(flag) = it.next() {
                let mut value = || {
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| usage())
                };
                match flag.as_str() {
                    "--shards" => o.shards = value() as u32,
                    "--events" => o.events = value(),
                    "--idle-shards" => o.idle_shards = value() as u32,
                    "--rounds" => o.rounds = value().max(1),
                    "--no-latency" => o.latency = false,
                    "--fine-pacing" => o.fine_pacing = true,
                    "--only" => o.only = Some(it.next().cloned().unwrap_or_else(|| usage())),
                    _ => usage(),
                }
            }
            runtime.block_on(run(o))
        }
        _ => usage(),
    }
}

async fn child(args: &[String]) {
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or_else(|| usage());
    // The parent writes "go" (the sink ceiling's start) and then "stop", or closes stdin: the
    // contestant then exits normally, so a profiler wrapped around it (BENCH_WRAP: perf stat,
    // callgrind) gets to write its results, which a kill would lose.
    let go = Arc::new(tokio::sync::Notify::new());
    let started = go.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match line.as_str() {
                "go" => started.notify_one(),
                "stop" => break,
                _ => {}
            }
        }
        contestants::remove_state();
        std::process::exit(0);
    });
    match arg(0) {
        "shardhook" => {
            let (max_events, linger) = (arg(4).parse().unwrap(), arg(5).parse().unwrap());
            let (compression, ordered) = (compression_named(arg(6)), arg(7) == "ordered");
            let batch = contestants::Batching {
                max_events,
                linger_ms: linger,
                ordered,
            };
            contestants::shardhook(arg(1), arg(2), arg(3), batch, compression).await
        }
        "twilight" => contestants::twilight(arg(1), arg(2), arg(3), arg(4).parse().unwrap()).await,
        "distant-twilight" => {
            let shards = arg(5).parse().unwrap_or_else(|_| usage());
            distant::twilight_child(arg(1), arg(2), arg(3), arg(4), shards).await
        }
        "rest-router" => rest::router_child(arg(1), arg(2)).await,
        "sink-ceiling" => {
            contestants::load_client(arg(1), arg(2), arg(3).parse().unwrap(), go).await
        }
        "limit" => {
            let (shards, events) = (arg(2).parse().unwrap(), arg(3).parse().unwrap());
            contestants::limit(arg(1), shards, events, compression_named(arg(4))).await
        }
        _ => usage(),
    }
}

/// A contestant as the parent launches it.
#[derive(Clone)]
enum Kind {
    Shardhook {
        max_events: usize,
        linger_ms: u64,
        compression: Compression,
        /// `delivery.ordering = "shard"` (the default) rather than `"none"`.
        ordered: bool,
    },
    Twilight,
    Limit(Compression),
    SinkCeiling,
    /// A shardhook contestant run from the build named by `BENCH_BASELINE` (an older
    /// `shardhook-bench`), beside the current one in the same run: an A/B of a change.
    Baseline(Box<Kind>),
}

impl Kind {
    fn name(&self) -> String {
        match self {
            Kind::Baseline(kind) => format!("baseline build: {}", kind.name()),
            Kind::Shardhook {
                max_events: 1,
                ordered,
                ..
            } => format!(
                "shardhook unbatched, {}",
                if *ordered {
                    "ordered per shard (default)"
                } else {
                    "unordered like the peer"
                }
            ),
            Kind::Shardhook {
                max_events,
                linger_ms,
                compression,
                ..
            } => format!("shardhook batched, {compression} ({max_events} events / {linger_ms} ms)"),
            Kind::Twilight => "twilight-gateway 0.18 peer forwarder".into(),
            Kind::Limit(compression) => {
                format!("limit: {compression} inflate + scan only (no HTTP)")
            }
            Kind::SinkCeiling => {
                "sink ceiling: plain load client (1 event per request, 64 in flight)".into()
            }
        }
    }

    fn paced(&self) -> bool {
        match self {
            Kind::Baseline(kind) => kind.paced(),
            kind => !matches!(kind, Kind::Limit(_) | Kind::SinkCeiling),
        }
    }
}

struct Ctx {
    blaster: Blaster,
    sink: Sink,
    secret: String,
    shards: u32,
    events: usize,
    fine_pacing: bool,
}

impl Ctx {
    fn spawn(&self, kind: &Kind) -> Child {
        let (exe, kind) = match kind {
            Kind::Baseline(kind) => (
                std::env::var_os("BENCH_BASELINE")
                    .expect("BENCH_BASELINE names the baseline build")
                    .into(),
                &**kind,
            ),
            kind => (std::env::current_exe().expect("own path"), kind),
        };
        // BENCH_WRAP runs each contestant under a profiler, e.g. "heaptrack" or
        // "valgrind --tool=callgrind"; the figures of such a run are not comparable.
        let wrap = std::env::var("BENCH_WRAP").unwrap_or_default();
        let mut wrap = wrap.split_whitespace();
        let mut cmd = match wrap.next() {
            Some(tool) => {
                let mut cmd = Command::new(tool);
                cmd.args(wrap).arg(exe);
                cmd
            }
            None => Command::new(exe),
        };
        cmd.arg("contestant");
        match kind {
            Kind::Shardhook {
                max_events,
                linger_ms,
                compression,
                ordered,
            } => cmd.args([
                "shardhook".to_owned(),
                self.blaster.api_url(),
                self.sink.url(),
                self.secret.clone(),
                max_events.to_string(),
                linger_ms.to_string(),
                compression.to_string(),
                if *ordered { "ordered" } else { "unordered" }.to_owned(),
            ]),
            Kind::Twilight => cmd.args([
                "twilight".to_owned(),
                self.blaster.gateway_url(),
                self.sink.url(),
                self.secret.clone(),
                self.shards.to_string(),
            ]),
            Kind::SinkCeiling => cmd.args([
                "sink-ceiling".to_owned(),
                self.sink.url(),
                self.secret.clone(),
                (self.events as u64 * self.shards as u64).to_string(),
            ]),
            Kind::Limit(compression) => cmd.args([
                "limit".to_owned(),
                self.blaster.gateway_url(),
                self.shards.to_string(),
                self.events.to_string(),
                compression.to_string(),
            ]),
            Kind::Baseline(_) => unreachable!("a baseline's kind was unwrapped above"),
        };
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn a contestant")
    }
}

/// utime + stime of `pid`, in seconds.
fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// This process's CPU seconds (source and sink), from getrusage.
fn cpu_self() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

struct Outcome {
    events: u64,
    secs: f64,
    cpu: f64,
    cpu_source: f64,
    rss_peak_kib: u64,
    /// Added latency of every event, in ms, sorted (paced rounds only).
    latency: Option<Vec<f64>>,
    timed_out: bool,
}

async fn wait_identified(blaster: &Blaster, n: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    while blaster.shared.identified.load(Ordering::SeqCst) < n as usize {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Runs one contestant over the whole load: as fast as it goes (`rate` None) or paced.
async fn round(ctx: &Ctx, kind: &Kind, rate: Option<f64>) -> Outcome {
    let target = ctx.events as u64 * ctx.shards as u64;
    ctx.blaster.reset();
    ctx.sink.reset(target);
    let mut child = ctx.spawn(kind);
    let pid = child.id().expect("a pid");
    let stdout = child.stdout.take().expect("piped stdout");
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line == "done" {
                let _ = done_tx.send(true);
            }
        }
    });
    let gateway_less = matches!(kind, Kind::SinkCeiling);
    if !gateway_less && !wait_identified(&ctx.blaster, ctx.shards).await {
        panic!("{}: shards did not identify", kind.name());
    }
    // Let READY be forwarded and start-up settle before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cpu0, self0) = (cpu_of(pid), cpu_self());
    let t0 = Instant::now();
    ctx.blaster.go(rate, ctx.fine_pacing);
    if gateway_less {
        if let Some(stdin) = child.stdin.as_mut() {
            let _ = tokio::io::AsyncWriteExt::write_all(stdin, b"go\n").await;
        }
    }
    let deadline = t0 + Duration::from_secs(300);
    let mut timed_out = false;
    loop {
        let finished = match kind {
            Kind::Limit(_) => *done_rx.borrow(),
            _ => ctx.sink.shared.events.load(Ordering::SeqCst) >= target,
        };
        if finished || ctx.sink.shared.bad_request.load(Ordering::SeqCst) {
            break;
        }
        if Instant::now() > deadline {
            timed_out = true;
            break;
        }
        // The sink notifies once, at the target: not a wake-up per request on the cores the
        // contestant is measured on.
        let notified = ctx.sink.shared.done.notified();
        tokio::select! {
            _ = notified => {}
            _ = done_rx.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let (cpu, cpu_source) = (cpu_of(pid) - cpu0, cpu_self() - self0);
    let rss_peak_kib = status_kib(pid, "VmHWM");
    stop(&mut child).await;
    let events = match kind {
        Kind::Limit(_) => target,
        _ => ctx.sink.shared.events.load(Ordering::SeqCst),
    };
    let latency = (rate.is_some() && kind.paced()).then(|| latency(ctx));
    Outcome {
        events,
        secs,
        cpu,
        cpu_source,
        rss_peak_kib,
        latency,
        timed_out,
    }
}

/// Asks a contestant to exit ("stop" on its stdin) and waits for it, so a profiler wrapped
/// around it can write its results; kills it if it has not exited within a minute (callgrind
/// can take that long to write).
async fn stop(child: &mut Child) {
    if let Some(mut stdin) = child.stdin.take() {
        let _ = tokio::io::AsyncWriteExt::write_all(&mut stdin, b"stop\n").await;
    }
    if tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}

/// Every event's (arrival at the sink - frame written by the source), in ms, sorted.
fn latency(ctx: &Ctx) -> Vec<f64> {
    let arrivals = ctx.sink.shared.arrivals.lock().unwrap().clone();
    let mut lat: Vec<u64> = Vec::with_capacity(ctx.events * ctx.shards as usize);
    for a in arrivals {
        let sent = &ctx.blaster.shared.sent_at[a.shard as usize];
        for seq in a.first..=a.last {
            let i = (seq - frames::FIRST_SEQ) as usize;
            if let Some(t) = sent.get(i) {
                lat.push(a.at_nanos.saturating_sub(t.load(Ordering::Relaxed)));
            }
        }
    }
    lat.sort_unstable();
    lat.into_iter().map(|n| n as f64 / 1e6).collect()
}

/// The `q` quantile of sorted values (NaN if there are none).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut all: Vec<f64> = values.into_iter().collect();
    all.sort_by(f64::total_cmp);
    quantile(&all, 0.5)
}

/// RSS of shardhook holding `shards` idle connections (no traffic), in KiB.
async fn idle_rss(shards: u32, secret: &str, epoch: Instant) -> Option<u64> {
    let blaster = Blaster::start(Arc::new(Load::build(0, 1)), shards, epoch).await;
    let sink = Sink::start(epoch, signer(secret)).await;
    let ctx = Ctx {
        blaster,
        sink,
        secret: secret.to_owned(),
        shards,
        events: 0,
        fine_pacing: false,
    };
    let mut child = ctx.spawn(&Kind::Shardhook {
        max_events: 1,
        linger_ms: 0,
        compression: Compression::ZlibStream,
        ordered: true,
    });
    let pid = child.id()?;
    let ok = wait_identified(&ctx.blaster, shards).await;
    // Let READYs be delivered and allocations settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = status_kib(pid, "VmRSS");
    stop(&mut child).await;
    ok.then_some(rss)
}

fn signer(secret: &str) -> shardhook::Signer {
    shardhook::Signer::new(
        shardhook::SigningKey::parse(secret).expect("a valid secret"),
        vec![],
    )
}

async fn run(o: Options) {
    let epoch = Instant::now();
    let started = std::time::SystemTime::now();
    let build = Instant::now();
    let load = Arc::new(Load::build(o.events, 7));
    println!(
        "load: {} events per shard x {} shards, built in {:.2} s; mix {}; {:.0} bytes raw / {:.0} zlib-stream / {:.0} zstd-stream on the wire per event",
        o.events,
        o.shards,
        build.elapsed().as_secs_f64(),
        KINDS
            .iter()
            .zip(load.mix)
            .map(|(k, n)| format!("{k} {:.1}%", 100.0 * n as f64 / o.events as f64))
            .collect::<Vec<_>>()
            .join(", "),
        load.raw_bytes as f64 / o.events as f64,
        load.zlib.wire_bytes as f64 / o.events as f64,
        load.zstd.wire_bytes as f64 / o.events as f64,
    );
    let secret = shardhook::SigningKey::generate();
    let ctx = Ctx {
        blaster: Blaster::start(load, o.shards, epoch).await,
        sink: Sink::start(epoch, signer(&secret)).await,
        secret: secret.clone(),
        shards: o.shards,
        events: o.events,
        fine_pacing: o.fine_pacing,
    };
    let shardhook = |max_events, linger_ms, compression, ordered| Kind::Shardhook {
        max_events,
        linger_ms,
        compression,
        ordered,
    };
    let kinds = [
        Kind::Limit(Compression::ZlibStream),
        Kind::Limit(Compression::ZstdStream),
        Kind::Twilight,
        shardhook(1, 0, Compression::ZlibStream, false),
        shardhook(1, 0, Compression::ZlibStream, true),
        shardhook(100, 5, Compression::ZlibStream, true),
        shardhook(100, 5, Compression::ZstdStream, true),
        // No linger: a batch takes only what is already queued, so it grows with the backlog.
        shardhook(100, 0, Compression::ZlibStream, true),
        Kind::SinkCeiling,
    ];
    // BENCH_BASELINE=path/to/an/older/shardhook-bench: each shardhook contestant also runs
    // from that build, next to the current one in every repetition.
    let baseline = std::env::var_os("BENCH_BASELINE").is_some();
    let kinds: Vec<Kind> = kinds
        .into_iter()
        .flat_map(|kind| {
            let twin = (baseline && matches!(kind, Kind::Shardhook { .. }))
                .then(|| Kind::Baseline(Box::new(kind.clone())));
            std::iter::once(kind).chain(twin)
        })
        .collect();
    let chosen: Vec<&Kind> = kinds
        .iter()
        .filter(|k| {
            o.only
                .as_ref()
                .is_none_or(|only| only.split(',').any(|name| k.name().contains(name)))
        })
        .collect();
    // Repetitions go round the contestants, so a slow stretch of the machine hits them all.
    let mut peaks: Vec<Vec<Outcome>> = chosen.iter().map(|_| Vec::new()).collect();
    for repetition in 1..=o.rounds {
        for (kind, peaks) in chosen.iter().zip(&mut peaks) {
            let peak = round(&ctx, kind, None).await;
            let bad_sig = ctx.sink.shared.bad_signature.swap(false, Ordering::SeqCst);
            if ctx.sink.shared.bad_request.load(Ordering::SeqCst) {
                panic!("{}: the sink refused a request (see above)", kind.name());
            }
            eprintln!(
                "[{repetition}/{}] {}: {:.0} events/s, {:.2} CPU s per M events{}{}",
                o.rounds,
                kind.name(),
                peak.events as f64 / peak.secs,
                peak.cpu / peak.events as f64 * 1e6,
                if peak.timed_out { " (TIMED OUT)" } else { "" },
                if bad_sig { " (BAD SIGNATURE)" } else { "" },
            );
            peaks.push(peak);
        }
    }
    let rate_of = |p: &Outcome| p.events as f64 / p.secs;
    let per_m = |p: &Outcome, cpu: f64| cpu / p.events as f64 * 1e6;
    let mut halves: Vec<Option<Outcome>> = Vec::new();
    for (kind, peaks) in chosen.iter().zip(&peaks) {
        halves.push(if o.latency && kind.paced() {
            let rate = median(peaks.iter().map(rate_of)) / 2.0;
            let half = round(&ctx, kind, Some(rate)).await;
            if let Some(lat) = &half.latency {
                eprintln!(
                    "{} at {rate:.0} events/s: latency p50/p99/max {:.2}/{:.2}/{:.2} ms",
                    kind.name(),
                    quantile(lat, 0.5),
                    quantile(lat, 0.99),
                    quantile(lat, 1.0)
                );
            }
            Some(half)
        } else {
            None
        });
    }

    let find = |want: &dyn Fn(&Kind) -> bool| chosen.iter().position(|k| want(k));
    let limit = find(&|k| matches!(k, Kind::Limit(Compression::ZlibStream)));
    let limit_rate = limit.map_or(f64::NAN, |i| median(peaks[i].iter().map(rate_of)));
    println!();
    println!(
        "Medians of {} peak rounds each; latency from one round paced at half the median peak ({}).",
        o.rounds,
        if o.fine_pacing {
            "--fine-pacing: frames released one at a time by a thread of their own"
        } else {
            "paced on tokio's 1 ms timer"
        }
    );
    println!();
    println!("| contestant | events/s | x limit | CPU s / M events | source+sink CPU s / M events | peak RSS MiB | p50 ms @50% | p99 ms @50% | max ms @50% |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for ((kind, peaks), half) in chosen.iter().zip(&peaks).zip(&halves) {
        let rate = median(peaks.iter().map(rate_of));
        let lat = half.as_ref().and_then(|h| h.latency.as_deref());
        let q = |q: f64| lat.map_or("n/a".to_owned(), |l| format!("{:.2}", quantile(l, q)));
        println!(
            "| {}{} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {} | {} |",
            kind.name(),
            if peaks.iter().any(|p| p.timed_out) {
                " (timed out)"
            } else {
                ""
            },
            rate,
            rate / limit_rate,
            median(peaks.iter().map(|p| per_m(p, p.cpu))),
            median(peaks.iter().map(|p| per_m(p, p.cpu_source))),
            median(peaks.iter().map(|p| p.rss_peak_kib as f64)) / 1024.0,
            q(0.5),
            q(0.99),
            q(1.0),
        );
    }

    // The targets' ratios, per repetition: each pair ran minutes apart at most.
    let twilight = find(&|k| matches!(k, Kind::Twilight));
    let unordered = find(&|k| {
        matches!(
            k,
            Kind::Shardhook {
                max_events: 1,
                ordered: false,
                ..
            }
        )
    });
    let ordered = find(&|k| {
        matches!(
            k,
            Kind::Shardhook {
                max_events: 1,
                ordered: true,
                ..
            }
        )
    });
    let batched = |t: Compression| {
        find(
            &|k| matches!(k, Kind::Shardhook { max_events: 100, compression, .. } if *compression == t),
        )
    };
    let (zlib_batched, zstd_batched) = (
        batched(Compression::ZlibStream),
        batched(Compression::ZstdStream),
    );
    let ratio =
        |a: Option<usize>, b: Option<usize>, r: usize, f: &dyn Fn(&Outcome) -> f64| match (a, b) {
            (Some(a), Some(b)) => format!("{:.2}", f(&peaks[a][r]) / f(&peaks[b][r])),
            _ => "n/a".to_owned(),
        };
    let speed = |p: &Outcome| rate_of(p);
    let cost = |p: &Outcome| per_m(p, p.cpu);
    println!();
    println!("| repetition | unordered ÷ twilight events/s | unordered ÷ twilight CPU/event | ordered ÷ twilight events/s | ordered ÷ twilight CPU/event | batched ÷ limit events/s | batched ÷ limit CPU/event | zstd ÷ zlib batched CPU/event |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in 0..o.rounds {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r + 1,
            ratio(unordered, twilight, r, &speed),
            ratio(unordered, twilight, r, &cost),
            ratio(ordered, twilight, r, &speed),
            ratio(ordered, twilight, r, &cost),
            ratio(zlib_batched, limit, r, &speed),
            ratio(zlib_batched, limit, r, &cost),
            ratio(zstd_batched, zlib_batched, r, &cost),
        );
    }
    // The latency distributions, for the chart: 1000 quantiles each, in ms.
    println!();
    for (kind, half) in chosen.iter().zip(&halves) {
        if let Some(lat) = half.as_ref().and_then(|h| h.latency.as_deref()) {
            let cdf: Vec<String> = (0..=1000)
                .map(|i| format!("{:.3}", quantile(lat, i as f64 / 1000.0)))
                .collect();
            println!("latency-cdf {} | {}", kind.name(), cdf.join(" "));
        }
    }
    if o.idle_shards > 0 {
        let one = idle_rss(1, &secret, epoch).await;
        let many = idle_rss(o.idle_shards, &secret, epoch).await;
        println!();
        match (one, many) {
            (Some(one), Some(many)) => println!(
                "idle shards: RSS {:.1} MiB with 1 shard, {:.1} MiB with {} shards: {:.1} KiB per shard in all, {:.1} KiB per added shard",
                one as f64 / 1024.0,
                many as f64 / 1024.0,
                o.idle_shards,
                many as f64 / o.idle_shards as f64,
                (many - one.min(many)) as f64 / (o.idle_shards - 1).max(1) as f64,
            ),
            _ => println!("idle shards: the router did not connect them all in time"),
        }
        // The 1-shard base is bimodal (9.2-9.6 or 10.3-10.7 MiB for the same build: one-time
        // memory such as another malloc arena, there in some processes and not in others),
        // which moves the slope above by ~1 KiB. Half the shards have all of it, as the full
        // count does, so the slope between the two counts leaves it out.
        let half_count = o.idle_shards / 2;
        if half_count > 1 {
            match (idle_rss(half_count, &secret, epoch).await, many) {
                (Some(half), Some(many)) => println!(
                    "idle shards: RSS {:.1} MiB with {} shards: {:.1} KiB per shard added between {} and {}",
                    half as f64 / 1024.0,
                    half_count,
                    (many - half.min(many)) as f64 / (o.idle_shards - half_count) as f64,
                    half_count,
                    o.idle_shards,
                ),
                _ => println!("idle shards: the router did not connect them all in time"),
            }
        }
    }
    let secs = started
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    println!();
    println!(
        "run: {} shards x {} events, started at Unix {secs}, took {:.0} s",
        o.shards,
        o.events,
        epoch.elapsed().as_secs_f64()
    );
}
