//! `starling-viewer`: joins a stream's mesh and serves it as HLS on localhost.
//! Prints the playlist URL as the first line of stdout.

use clap::Parser;
use starling::cli::Latency;
use starling::http::AllowedOrigin;
use starling::rate::Rate;
use starling::stream::Ticket;
use starling::token::Credential;
use starling::viewer::{self, ViewerConfig};
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

/// Watch a Starling stream: join its mesh and play it in any HLS player.
///
/// Prints a playlist URL on the first line of stdout: open it in VLC, ffplay, mpv
/// or a browser with HLS support.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The ticket the broadcaster printed.
    ticket: String,

    /// Private streams: the join token the broadcaster gave you (`starling-broadcaster
    /// token`). The environment variable keeps it out of the process list.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "STARLING_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,

    /// Address for the local HLS server, also serving /stats and /metrics (port 0: any
    /// free port; the printed URL shows it).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    http: SocketAddr,

    /// UDP address for QUIC; fix the port (and open it) so viewers on other machines can
    /// reach this one.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:0")]
    listen: SocketAddr,

    /// Cap on upload to other viewers in bits/s, with optional k/M/G suffix (e.g. 3M)
    /// [default: unlimited]
    #[arg(long, value_name = "RATE")]
    upload_limit: Option<Rate>,

    /// Never upload to other viewers (for metered links). Partners are told, so they
    /// neither ask this viewer for segments nor get its address from it.
    #[arg(long, conflicts_with = "upload_limit")]
    no_upload: bool,

    /// The site (office) this viewer is on, for networks where viewers of one LAN do not
    /// share one public address: viewers given the same name pair over their LAN and pull
    /// the stream across the site's WAN about once. Viewers behind one address need none.
    #[arg(long, value_name = "NAME", value_parser = viewer::site_name)]
    site: Option<String>,

    /// How close to live: `normal` or `low` (for a broadcaster also on --latency low; its
    /// shorter segments are what bring the picture closer). --delay overrides it.
    #[arg(long, value_name = "PRESET", default_value = "normal", value_parser = Latency::parse)]
    latency: Latency,

    /// Segments held back behind the newest, 0 to 20: each adds a segment of slack for late
    /// segments and a segment of delay. [default: 0]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=20))]
    delay: Option<u64>,

    /// Let pages of this web origin (e.g. https://example.org) read the local server's
    /// playlist, segments and /stats; repeat for more. By default only the viewer's own page
    /// can. Never applies to a private stream.
    #[arg(long, value_name = "ORIGIN", value_parser = clap::value_parser!(AllowedOrigin))]
    allow_origin: Vec<AllowedOrigin>,

    /// Open the watch page (the local server's `/`) in the default browser once the
    /// stream is joined.
    #[arg(long)]
    open: bool,
}

fn main() {
    starling::cli::run_main("starling-viewer", run)
}

async fn run() -> bool {
    // First: a stop signal from now on ends the program cleanly.
    let stop = starling::cli::shutdown_signal();
    let args = Args::parse();
    starling::cli::init_logging();
    let ticket = match Ticket::decode(&args.ticket) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("starling-viewer: {e}");
            return false;
        }
    };
    let token = match args.token.as_deref().map(Credential::decode).transpose() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("starling-viewer: {e}");
            return false;
        }
    };
    if token.is_some() && !args.allow_origin.is_empty() {
        eprintln!(
            "starling-viewer: --allow-origin ignored: a private stream is never readable from \
             other web origins"
        );
    }
    let config = ViewerConfig {
        ticket,
        token,
        http: args.http,
        listen: args.listen,
        upload_limit: args.upload_limit,
        no_upload: args.no_upload,
        site: args.site,
        delay: args.delay.unwrap_or(args.latency.delay()),
        window: viewer::PLAYER_WINDOW,
        allow_origins: args.allow_origin,
        status_line: starling::cli::stderr_is_terminal(),
        linger_after_end: Duration::from_secs(30),
    };
    let open = args.open;
    let print_url = move |url: &str| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{url}");
        let _ = out.flush();
        if open {
            viewer::open_page(url);
        }
    };
    match viewer::run(config, print_url, stop).await {
        Ok(()) => true,
        Err(e) => {
            eprintln!("starling-viewer: {e}");
            false
        }
    }
}
