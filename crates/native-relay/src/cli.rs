//! The `cairn-relay` command line.
//!
//! ```text
//! cairn-relay [serve] [--listen MULTIADDR]... [--bootstrap MULTIADDR]... [--ipfs-dht] [--no-relay [--no-mdns]] [--upnp] [--relay MULTIADDR]... [--http ADDR] [--identity FILE] [--web-root DIR] [--store DIR] [--swarm-key FILE]
//! cairn-relay id [--identity FILE]
//! cairn-relay swarm-key [-o NEW-FILE]
//! cairn-relay add FILE|DIR [-r] [--wrap] [--preserve-mode] [--preserve-mtime] [--profile default|unixfs-v1-2025] [--hash sha2-256|blake3] [--only-hash] [--store DIR]
//! cairn-relay cat CID[/PATH] [SOURCES] [-o FILE]
//! cairn-relay ls CID[/PATH] [SOURCES]
//! cairn-relay get CID[/PATH] -o NEW-PATH [SOURCES]
//! cairn-relay queue [FILE|-] [SOURCES] [--concurrency N] [--priority P] [--pin]
//! cairn-relay replicate CID --replicas N --peer MULTIADDR... [--store DIR] [--swarm-key FILE] [--watch SECS]
//!   SOURCES: [--store DIR] [--peer MULTIADDR]... [--ipfs-via MULTIADDR]... [--routing URL]...
//!            [--gateway URL]... [--swarm-key FILE] [--max-rate RATE] [--timeout SECS]
//! ```
//! Exit codes: 0 success, 1 other failure, 2 bad usage, 3 content not found, 4 a source sent
//! bytes that do not match the CID, 5 store or output not writable, 6 input unreadable,
//! 7 could not start (port in use, bad identity).
#![allow(clippy::print_stdout)] // stdout is this module's interface

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cairn_core::cid::HashAlg;
use cairn_core::source::{Context, Failure as Fetch};
use cairn_core::store::{BlockStore, Null};
use cairn_core::unixfs::{self, ExportError, ImportError, Profile, Range, dir};
use cairn_p2p::sources::{self, IpfsRouting, Sources};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use libp2p::Multiaddr;

use crate::store::Disk;

mod queue;
mod replicate;

/// cairn-relay: a circuit relay for cairn browser nodes, and a native cairn node.
#[derive(Debug, Parser)]
#[command(version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay (the default when no command is given).
    Serve(ServeArgs),
    /// Print the relay's peer id.
    Id {
        /// The identity key file.
        #[arg(long, env = "CAIRN_IDENTITY")]
        identity: Option<PathBuf>,
    },
    /// Make a private network's key (the format IPFS uses, `/key/swarm/psk/1.0.0/`) and print
    /// it, or write it to a new file; give the file to every member with --swarm-key.
    SwarmKey {
        /// Write the key to this file (mode 0600; it must not exist yet) instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Import a file, or a directory with -r, as UnixFS and print its root CID.
    Add {
        /// The file or directory to import.
        file: PathBuf,
        /// Import a directory and everything under it (files in name order, empty
        /// directories kept; symlinks are refused).
        #[arg(short, long)]
        recursive: bool,
        /// Wrap the file or directory in a directory, so that its name survives in the CID.
        #[arg(short, long)]
        wrap: bool,
        /// Keep each file's and directory's permission bits (the low 12) in the DAG.
        #[arg(long)]
        preserve_mode: bool,
        /// Keep each file's and directory's modification time (to the nanosecond) in the DAG.
        #[arg(long)]
        preserve_mtime: bool,
        /// Chunking profile.
        #[arg(long, default_value = "default")]
        profile: Profile,
        /// Hash function.
        #[arg(long, default_value = "sha2-256")]
        hash: HashAlg,
        /// Compute the CID without storing anything.
        #[arg(long)]
        only_hash: bool,
        /// The block store directory.
        #[arg(long, env = "CAIRN_STORE")]
        store: Option<PathBuf>,
    },
    /// Write the verified bytes of a file (CID, or CID/path in a directory) to stdout or a
    /// file.
    Cat {
        /// The root CID, or CID/path/in/a/directory (`/ipfs/` in front is accepted).
        cid: String,
        #[command(flatten)]
        from: FetchArgs,
        /// Write to this file instead of stdout (only complete, verified output is kept).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// List a directory (CID, or CID/path): one line per entry, `CID SIZE NAME`, a `/`
    /// after the names of directories.
    Ls {
        /// The directory's CID, or CID/path.
        cid: String,
        /// Also show each entry's mode and modification time (as `add --preserve-mode
        /// --preserve-mtime` keeps them; `-` where none is stored).
        #[arg(short, long)]
        long: bool,
        #[command(flatten)]
        from: FetchArgs,
    },
    /// Fetch the CIDs in FILE into the store, through the transfer queue: by priority,
    /// N at a time, each retried with backoff when its sources fail. A line is `CID
    /// [critical|high|normal|low] [max-rate=RATE] [sources=peers,ipfs,gateway,local]
    /// [ttl=SECS]`; `#` starts a comment. Transfers an earlier run left unfinished in the
    /// store's queue (interrupted, or paused) run first; with no FILE, only those.
    Queue {
        /// The file of CIDs (`-`: standard input).
        file: Option<PathBuf>,
        #[command(flatten)]
        from: FetchArgs,
        /// Transfers that run at once.
        #[arg(long, default_value_t = 3)]
        concurrency: usize,
        /// The priority of lines that name none.
        #[arg(long, default_value = "normal")]
        priority: cairn_core::transfer::Priority,
        /// Pin each root once fetched (a relay serving the store then provides it).
        #[arg(long)]
        pin: bool,
    },
    /// Ask peers to keep copies of a DAG this store holds (collaborative pinning): each
    /// --peer that speaks /cairn/pin/1.0.0 is asked in turn until REPLICAS confirm, and
    /// each confirmation is checked (a random block asked for and verified). With --watch,
    /// the copies are checked again every SECS, and a peer that went away or failed a
    /// check (its trust cut) is replaced by another, until interrupted.
    Replicate {
        /// The root (held in full in the store).
        cid: String,
        /// Copies wanted.
        #[arg(long, default_value_t = 2)]
        replicas: usize,
        /// Peers that may keep a copy (a multiaddr ending in /p2p/<id>; repeatable).
        #[arg(long = "peer", required = true)]
        peers: Vec<Multiaddr>,
        /// The block store directory.
        #[arg(long, env = "CAIRN_STORE")]
        store: Option<PathBuf>,
        /// Reach the peers in the private network of this swarm key file.
        #[arg(long, env = "CAIRN_SWARM_KEY")]
        swarm_key: Option<PathBuf>,
        /// Check the copies again every SECS seconds, replacing lost ones, until interrupted.
        #[arg(long)]
        watch: Option<u64>,
    },
    /// Write a file or a whole directory tree (CID, or CID/path), verified, under a new
    /// name: each file is written under a temporary name and renamed when complete.
    Get {
        /// The CID, or CID/path.
        cid: String,
        #[command(flatten)]
        from: FetchArgs,
        /// Where to write it (must not exist yet).
        #[arg(short, long)]
        output: PathBuf,
    },
}

/// Where a fetch looks beyond the local store, and for how long.
#[derive(Debug, Clone, clap::Args)]
struct FetchArgs {
    /// The block store directory.
    #[arg(long, env = "CAIRN_STORE")]
    store: Option<PathBuf>,
    /// Peers to ask over /cas/1.0.0 (a full multiaddr ending in /p2p/<id>, direct or a
    /// relay circuit), raced in parallel before any gateway.
    #[arg(long = "peer")]
    peers: Vec<Multiaddr>,
    /// The IPFS source: DHT servers (a cairn-relay's multiaddr ending in /p2p/<id>) to
    /// ask for providers, which are then asked over bitswap.
    #[arg(long = "ipfs-via")]
    ipfs_via: Vec<Multiaddr>,
    /// The IPFS source: Delegated Routing V1 endpoints (`http://host:port`, as a
    /// cairn-relay serves) to ask for providers, which are then asked over bitswap.
    #[arg(long = "routing")]
    routing: Vec<String>,
    /// Trustless gateways to ask for blocks the store lacks, in order.
    #[arg(long = "gateway")]
    gateways: Vec<String>,
    /// Reach --peer and --ipfs-via peers in the private network of this swarm key file.
    #[arg(long, env = "CAIRN_SWARM_KEY")]
    swarm_key: Option<PathBuf>,
    /// Receive at most this many bytes per second (500K, 2MiB, 1.5M/s; K, M and G count in
    /// 1,024s): the content is fetched into the store through the transfer queue (retried
    /// when sources fail), then written. For `queue`, the cap for all transfers together.
    #[arg(long)]
    max_rate: Option<cairn_core::transfer::Rate>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

#[derive(Debug, Clone, clap::Args)]
struct ServeArgs {
    /// libp2p listen address (repeatable); replaces the defaults (TCP 4001, WebSocket 4002, QUIC UDP 4001, WebRTC-direct UDP 4002, and WebSocket over TLS on 4003 when a certificate is given).
    #[arg(long = "listen", env = "CAIRN_LISTEN", value_delimiter = ',')]
    listen: Vec<Multiaddr>,
    /// The HTTP listener for the web app, /health, /metrics and the gateway [default: 127.0.0.1:8080].
    #[arg(long, env = "CAIRN_HTTP")]
    http: Option<std::net::SocketAddr>,
    /// A TOML file with these settings and the relay limits (flags and env win over it).
    #[arg(long, env = "CAIRN_CONFIG")]
    config: Option<PathBuf>,
    /// The identity key file (created on first run).
    #[arg(long, env = "CAIRN_IDENTITY")]
    identity: Option<PathBuf>,
    /// Serve the web app's files from this directory.
    #[arg(long, env = "CAIRN_WEB_ROOT")]
    web_root: Option<PathBuf>,
    /// Serve the blocks of this store to peers over /cas/1.0.0 (content role).
    #[arg(long = "store", env = "CAIRN_SERVE_STORE")]
    store: Option<PathBuf>,
    /// A relay (or any DHT server) to federate with, as a multiaddr ending in /p2p/<id> (repeatable; CAIRN_BOOTSTRAP takes a comma-separated list). Dialed at start without waiting, again with backoff (1 s doubling to 5 min) while unreachable.
    #[arg(long = "bootstrap", env = "CAIRN_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<Multiaddr>,
    /// Run as a node, not a relay: hold no reservations or circuits for others and be a DHT client; announce only the addresses AutoNAT confirms reachable, and circuits through --relay.
    #[arg(long, env = "CAIRN_NO_RELAY")]
    no_relay: bool,
    /// With --no-relay: do not look for peers on the local network by mDNS (on by default for nodes, off for relays).
    #[arg(long, env = "CAIRN_NO_MDNS")]
    no_mdns: bool,
    /// Map the listening ports on the local gateway by UPnP (off by default).
    #[arg(long, env = "CAIRN_UPNP")]
    upnp: bool,
    /// A relay to hold a reservation on (repeatable; CAIRN_RELAYS comma-separated), so that peers reach this node through it while AutoNAT does not find it reachable; relayed connections are moved to direct ones by hole punching where the NATs allow.
    #[arg(long = "relay", env = "CAIRN_RELAYS", value_delimiter = ',')]
    relays: Vec<Multiaddr>,
    /// Join the IPFS DHT: bootstrap from the public IPFS network's peers (or from the --bootstrap ones, when given), so the store's pinned roots are provided there and providers are found there.
    #[arg(long, env = "CAIRN_IPFS_DHT")]
    ipfs_dht: bool,
    /// PEM certificate chain for WebSocket over TLS (/tls/ws listeners); needs --tls-key.
    #[arg(long, env = "CAIRN_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "CAIRN_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Keep content for peers that ask (collaborative pinning, /cairn/pin/1.0.0; needs --store): at most this many bytes for all of them together (10GiB, 500M). Off by default.
    #[arg(long, env = "CAIRN_PIN_QUOTA", value_parser = parse_size)]
    pin_quota: Option<u64>,
    /// With --pin-quota: at most this many bytes for one peer [default: the smaller of 1 GiB and --pin-quota].
    #[arg(long, env = "CAIRN_PIN_QUOTA_PER_PEER", value_parser = parse_size)]
    pin_quota_per_peer: Option<u64>,
    /// With --pin-quota: keep content only for these peers (a peer id; repeatable; CAIRN_PIN_TRUST comma-separated). Default: for anyone.
    #[arg(long = "pin-trust", env = "CAIRN_PIN_TRUST", value_delimiter = ',')]
    pin_trust: Vec<libp2p::PeerId>,
    /// Send peers at most this many bytes of blocks per second, to all of them together (/cas answers and bitswap blocks; 500K, 8MiB, 1.5M/s).
    #[arg(long, env = "CAIRN_MAX_SERVE_RATE")]
    max_serve_rate: Option<cairn_core::transfer::Rate>,
    /// Run in the private network of this swarm key file (make one with `cairn-relay swarm-key`): only peers with the same key connect. Listens on TCP and WebSocket only by default (QUIC and WebRTC-direct cannot carry the protection); the HTTP gateway and delegated routing are off.
    #[arg(long, env = "CAIRN_SWARM_KEY")]
    swarm_key: Option<PathBuf>,
}

/// The process's exit codes (see docs/cli.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Any other failure.
    Failure = 1,
    /// Bad usage: an argument is not what it should be.
    Usage = 2,
    /// No source had the content.
    NotFound = 3,
    /// A source sent bytes that do not match the CID (and none sent the right ones).
    InvalidData = 4,
    /// The store or the output cannot be written.
    NotWritable = 5,
    /// The input cannot be read.
    Unreadable = 6,
    /// The relay could not start (port in use, bad identity or configuration).
    CannotStart = 7,
}

impl Exit {
    /// The exit code for a fetch that failed this way.
    pub fn of_fetch(failure: Fetch) -> Self {
        match failure {
            Fetch::InvalidData => Exit::InvalidData,
            Fetch::NotFound | Fetch::Unreachable => Exit::NotFound,
            _ => Exit::Failure,
        }
    }
}

/// A failure with its exit code.
#[derive(Debug)]
struct Failure {
    exit: Exit,
    message: String,
}

fn fail(exit: Exit, message: impl std::fmt::Display) -> Failure {
    Failure {
        exit,
        message: message.to_string(),
    }
}

/// Where cairn keeps its data when no path is given: `$XDG_DATA_HOME/cairn` or
/// `~/.local/share/cairn`.
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("cairn");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/cairn"),
        None => PathBuf::from(".cairn"),
    }
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.exit as u8)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        None => serve(cli.serve).await,
        Some(Command::Serve(args)) => serve(args).await,
        Some(Command::Id { identity }) => {
            let key = load_identity(identity)?;
            println!("{}", key.public().to_peer_id());
            Ok(())
        }
        Some(Command::SwarmKey { output }) => swarm_key(output.as_deref()),
        Some(Command::Add {
            file,
            recursive,
            wrap,
            preserve_mode,
            preserve_mtime,
            profile,
            hash,
            only_hash,
            store,
        }) => {
            let how = AddHow {
                recursive,
                wrap,
                preserve_mode,
                preserve_mtime,
                profile,
                hash,
            };
            // One live operation for the whole add: a failure (an unreadable file halfway
            // through a tree, a full store) deletes every block it wrote.
            let mut op = cairn_core::live::Live::global().operation();
            let root = if only_hash {
                let store = Null::new();
                let root = add(&store, &file, &how, &mut op).await;
                op.finish();
                root?
            } else {
                let store = open_store(store).await?;
                // Two adds to one store take turns: each one's clean-up is then its own.
                let _turn = store
                    .lock_for_import()
                    .await
                    .map_err(|e| fail(Exit::NotWritable, e))?;
                let added = match add(&store, &file, &how, &mut op).await {
                    // Pinned: a relay serving this store provides it in the DHT.
                    Ok(root) => store
                        .pin(&root)
                        .await
                        .map(|()| root)
                        .map_err(|e| fail(Exit::NotWritable, e)),
                    Err(e) => Err(e),
                };
                match added {
                    Ok(root) => {
                        op.finish();
                        root
                    }
                    Err(e) => {
                        op.abandon(&store).await;
                        return Err(e);
                    }
                }
            };
            println!("{root}");
            Ok(())
        }
        Some(Command::Cat { cid, from, output }) => {
            let f = Fetcher::start(&cid, &from).await?;
            f.cat(output.as_deref()).await
        }
        Some(Command::Ls { cid, long, from }) => Fetcher::start(&cid, &from).await?.ls(long).await,
        Some(Command::Replicate {
            cid,
            replicas,
            peers,
            store,
            swarm_key,
            watch,
        }) => replicate::run(&cid, replicas, &peers, store, swarm_key.as_deref(), watch).await,
        Some(Command::Queue {
            file,
            from,
            concurrency,
            priority,
            pin,
        }) => queue::run(file.as_deref(), &from, concurrency, priority, pin).await,
        Some(Command::Get { cid, from, output }) => {
            Fetcher::start(&cid, &from).await?.get(&output).await
        }
    }
}

fn load_identity(path: Option<PathBuf>) -> Result<libp2p::identity::Keypair, Failure> {
    let path = path.unwrap_or_else(|| data_dir().join("identity.key"));
    crate::identity::load_or_create(&path).map_err(|e| fail(Exit::CannotStart, e))
}

/// A size in bytes: `1048576`, `500K`, `2MiB`, `10G` (K, M, G count in 1,024s).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        format!("`{text}` is not a size: write bytes with an optional unit (500K, 2MiB, 10G)")
    })?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "`{text}` is not a size: the unit must be K, M, G or T"
            ));
        }
    };
    Ok((value * scale as f64) as u64)
}

/// `swarm-key`: a new key, printed or written to a new file.
fn swarm_key(output: Option<&Path>) -> Result<(), Failure> {
    let key = cairn_p2p::pnet::SwarmKey::generate()
        .map_err(|e| fail(Exit::Failure, format!("cannot make a random key: {e}")))?;
    let text = format!("{}\n", key.to_file());
    match output {
        None => {
            print!("{text}");
            Ok(())
        }
        Some(path) => {
            crate::identity::write_private(path, text.as_bytes()).map_err(|e| {
                let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
                    "it already exists (a network's key is not replaced: move it away first)"
                        .to_owned()
                } else {
                    e.to_string()
                };
                fail(
                    Exit::NotWritable,
                    format!("cannot write the swarm key to {}: {why}", path.display()),
                )
            })?;
            eprintln!(
                "wrote a new swarm key to {} (fingerprint {})",
                path.display(),
                key.fingerprint()
            );
            Ok(())
        }
    }
}

/// Reads a swarm key file (`--swarm-key`).
fn load_swarm_key(path: &Path, exit: Exit) -> Result<cairn_p2p::pnet::SwarmKey, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(
            exit,
            format!("cannot read the swarm key {}: {e}", path.display()),
        )
    })?;
    cairn_p2p::pnet::SwarmKey::parse(&text)
        .map_err(|e| fail(exit, format!("swarm key {}: {e}", path.display())))
}

async fn open_store(dir: Option<PathBuf>) -> Result<Disk, Failure> {
    let dir = dir.unwrap_or_else(|| data_dir().join("store"));
    Disk::open(&dir)
        .await
        .map_err(|e| fail(Exit::NotWritable, e))
}

/// How `add` imports.
struct AddHow {
    recursive: bool,
    wrap: bool,
    preserve_mode: bool,
    preserve_mtime: bool,
    profile: Profile,
    hash: HashAlg,
}

impl AddHow {
    /// What `--preserve-mode` and `--preserve-mtime` keep of a file's or directory's `meta`
    /// (as Kubo does: the low 12 permission bits, the time to the nanosecond).
    fn kept(&self, meta: &std::fs::Metadata) -> dir::Metadata {
        #[cfg(unix)]
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            self.preserve_mode
                .then(|| meta.permissions().mode() & 0o7777)
        };
        #[cfg(not(unix))]
        let mode = None;
        let mtime = self
            .preserve_mtime
            .then(|| meta.modified().ok())
            .flatten()
            .map(|t| {
                let (secs, nsecs) = match t.duration_since(std::time::UNIX_EPOCH) {
                    Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
                    // Before 1970: whole seconds down, nanoseconds up from there.
                    Err(e) => {
                        let d = e.duration();
                        let down = d.as_secs() as i64 + i64::from(d.subsec_nanos() > 0);
                        (-down, (1_000_000_000 - d.subsec_nanos()) % 1_000_000_000)
                    }
                };
                unixfs::pb::Mtime {
                    secs,
                    nsecs: (nsecs > 0).then_some(nsecs),
                }
            });
        dir::Metadata { mode, mtime }
    }
}

fn unreadable(path: &Path, e: impl std::fmt::Display) -> Failure {
    fail(
        Exit::Unreadable,
        format!("cannot read {}: {e}", path.display()),
    )
}

/// A path's last name, as UnixFS stores it (UTF-8).
fn utf8_name(path: &Path) -> Result<String, Failure> {
    let name = path.file_name().ok_or_else(|| {
        fail(
            Exit::Usage,
            format!("{} has no name to wrap it under", path.display()),
        )
    })?;
    name.to_str().map(str::to_owned).ok_or_else(|| {
        fail(
            Exit::Unreadable,
            format!(
                "{}: the name is not UTF-8, which UnixFS names must be",
                path.display()
            ),
        )
    })
}

async fn add<S: BlockStore>(
    store: &S,
    path: &Path,
    how: &AddHow,
    op: &mut cairn_core::live::Operation<'_>,
) -> Result<cairn_core::Cid, Failure> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| unreadable(path, e))?;
    let mut tree = dir::TreeBuilder::new(how.profile, how.hash);
    let bad_path = |e: dir::PathError| fail(Exit::Unreadable, e);
    if meta.is_dir() {
        if !how.recursive {
            return Err(fail(
                Exit::Unreadable,
                format!("{} is a directory: add it with -r", path.display()),
            ));
        }
        let top = if how.wrap {
            utf8_name(path)?
        } else {
            tree.root_metadata(how.kept(&meta));
            String::new()
        };
        let mut files = 0u64;
        // Depth first, names in byte order; a directory with nothing in it is kept.
        let mut stack = vec![(path.to_owned(), top)];
        while let Some((dir_path, prefix)) = stack.pop() {
            let mut names = Vec::new();
            let mut rd = tokio::fs::read_dir(&dir_path)
                .await
                .map_err(|e| unreadable(&dir_path, e))?;
            while let Some(e) = rd
                .next_entry()
                .await
                .map_err(|e| unreadable(&dir_path, e))?
            {
                names.push(e.path());
            }
            names.sort();
            // An empty directory is an entry of its own; so is one whose metadata is kept.
            let keep = how.preserve_mode || how.preserve_mtime;
            if !prefix.is_empty() && (names.is_empty() || keep) {
                let m = tokio::fs::metadata(&dir_path)
                    .await
                    .map_err(|e| unreadable(&dir_path, e))?;
                tree.add_dir(&prefix, how.kept(&m)).map_err(bad_path)?;
            }
            for full in names.into_iter().rev() {
                let name = utf8_name(&full)?;
                let rel = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                };
                let kind = tokio::fs::symlink_metadata(&full)
                    .await
                    .map_err(|e| unreadable(&full, e))?;
                if kind.is_symlink() {
                    eprintln!(
                        "warning: skipped {}: a symlink (cairn adds what is in files and directories, not links)",
                        full.display()
                    );
                } else if kind.is_dir() {
                    stack.push((full, rel));
                } else {
                    let imported = add_one(store, &full, how.kept(&kind), how, op).await?;
                    tree.add(
                        &rel,
                        dir::Entry {
                            cid: imported.root,
                            tsize: imported.dag_size,
                        },
                    )
                    .map_err(bad_path)?;
                    files += 1;
                }
            }
        }
        tracing::debug!(files, "directory imported");
    } else {
        let imported = add_one(store, path, how.kept(&meta), how, op).await?;
        if !how.wrap {
            return Ok(imported.root);
        }
        tree.add(
            &utf8_name(path)?,
            dir::Entry {
                cid: imported.root,
                tsize: imported.dag_size,
            },
        )
        .map_err(bad_path)?;
    }
    let mut blocks = Vec::new();
    let root = tree
        .finish(&mut blocks)
        .map_err(|e| fail(Exit::Failure, e))?;
    op.put_many(store, blocks)
        .await
        .map_err(|e| fail(Exit::NotWritable, e))?;
    Ok(root.cid)
}

async fn add_one<S: BlockStore>(
    store: &S,
    path: &Path,
    meta: dir::Metadata,
    how: &AddHow,
    op: &mut cairn_core::live::Operation<'_>,
) -> Result<unixfs::Imported, Failure> {
    use tokio_util::compat::TokioAsyncReadCompatExt;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| unreadable(path, e))?;
    let reader = tokio::io::BufReader::with_capacity(1 << 20, file);
    let importer = unixfs::Importer::new(how.profile, how.hash).metadata(meta);
    unixfs::import_hashing(
        store,
        reader.compat(),
        importer,
        &unixfs::Inline,
        |_| {},
        op,
    )
    .await
    .map_err(|e| match e {
        ImportError::Read { .. } => unreadable(path, e),
        ImportError::Store(_) => fail(Exit::NotWritable, e),
        other => fail(Exit::Failure, other),
    })
}

/// Exit code for an export failure: what the fetch came down to, when it was one.
fn export_exit(e: &ExportError) -> Exit {
    match e {
        ExportError::Retrieve { source, .. } => Exit::of_fetch(source.failure()),
        _ => Exit::Failure,
    }
}

/// Starts a client node and connects to `peers`; peers that cannot be reached are reported
/// and skipped (the chain goes on to the gateways). Waits (briefly) for identify from those
/// among them that are also in `identify` (the DHT's: their routing tables come from it);
/// the others are asked over `/cas` as soon as they are connected.
async fn connect(
    peers: &[Multiaddr],
    identify: &[Multiaddr],
    deadline: Duration,
    swarm_key: Option<cairn_p2p::pnet::SwarmKey>,
    keep: bool,
) -> Result<cairn_p2p::Node, Failure> {
    for p in peers {
        if cairn_p2p::node::peer_of(p).is_none() {
            return Err(fail(
                Exit::Usage,
                format!("peer address {p} does not end in /p2p/<peer id>"),
            ));
        }
    }
    let config = cairn_p2p::node::Config {
        cas: cairn_p2p::cas::Config {
            serve: false,
            ..Default::default()
        },
        advertise_listen_addrs: false,
        // A one-shot fetch with an empty store has nothing to serve.
        bitswap: cairn_p2p::bitswap::Config {
            serve: false,
            ..Default::default()
        },
        swarm_key,
        ..Default::default()
    };
    let builder =
        cairn_p2p::Builder::new(libp2p::identity::Keypair::generate_ed25519()).config(config);
    let mut registry = prometheus_client::registry::Registry::default();
    let node = crate::node::build(builder, Null::new(), &Default::default(), &mut registry)
        .map_err(|e| fail(Exit::Failure, e))?;
    let dials = peers.iter().map(|p| {
        let node = node.clone();
        async move {
            (
                p,
                tokio::time::timeout(deadline, node.dial(p.clone())).await,
            )
        }
    });
    let mut connected = Vec::new();
    for (addr, out) in futures::future::join_all(dials).await {
        match out {
            Ok(Ok(id)) => connected.push(id),
            Ok(Err(e)) => eprintln!("warning: {e}"),
            Err(_) => eprintln!("warning: cannot dial {addr}: no answer within {deadline:?}"),
        }
    }
    // A queue keeps its peers: one that goes away (or was not reached) is dialed again
    // with backoff, so a transfer's next attempt finds it back.
    if keep {
        let _ = node.keep(peers.to_vec(), false).await;
    }
    let identified = identify
        .iter()
        .filter_map(cairn_p2p::node::peer_of)
        .filter(|id| connected.contains(id))
        .map(|id| {
            let node = node.clone();
            async move {
                node.wait_for(&[id], Duration::from_secs(5), |p| p.identified())
                    .await
            }
        });
    futures::future::join_all(identified).await;
    Ok(node)
}

/// `CID`, `CID/path` or `/ipfs/CID/path`: the root and the path under it.
fn split_cid_path(text: &str) -> Result<(cairn_core::Cid, String), Failure> {
    let (root, path) = dir::parse_target(text).map_err(|e| fail(Exit::Usage, e))?;
    Ok((root, path.to_owned()))
}

/// Exit code for a directory that could not be read.
fn read_exit(e: &dir::ReadError) -> Exit {
    match e {
        dir::ReadError::Retrieve { source, .. } => Exit::of_fetch(source.failure()),
        dir::ReadError::NotFound { .. } => Exit::NotFound,
        dir::ReadError::NotADirectory { .. } | dir::ReadError::Path(_) => Exit::Usage,
        _ => Exit::Failure,
    }
}

/// The chain of sources one `cat`, `ls` or `get` fetches through.
struct Fetcher {
    chain: Arc<cairn_core::source::Chain>,
    root: cairn_core::Cid,
    path: String,
    ctx: Context,
    /// The cap `--max-rate` sets.
    max_rate: Option<cairn_core::transfer::Rate>,
    /// Keeps the node alive while the chain asks its peers.
    setup: Option<Setup>,
}

/// What a fetch reads from and writes to: the store, the client node (with peers or
/// IPFS), the sources beyond the store, and the time allowed.
struct Setup {
    store: Disk,
    node: Option<cairn_p2p::Node>,
    sources: Sources,
    http: crate::http::Client,
    timeout: Duration,
    max_rate: Option<cairn_core::transfer::Rate>,
}

impl Setup {
    /// Opens the store and, when peers or IPFS are asked for, starts a client node and
    /// connects (`keep`: and keeps reconnecting, for a queue).
    async fn new(from: &FetchArgs, keep: bool) -> Result<Self, Failure> {
        let timeout = Duration::from_secs(from.timeout);
        let store = open_store(from.store.clone()).await?;
        let http = crate::http::Client::new().map_err(|e| fail(Exit::Failure, e))?;
        let check = |what, urls: &[String]| {
            urls.iter()
                .map(|u| sources::http_url(what, u).map_err(|e| fail(Exit::Usage, e)))
                .collect::<Result<Vec<_>, _>>()
        };
        let routers = check("routing endpoint", &from.routing)?;
        let gateways = check("gateway", &from.gateways)?;
        let ipfs = !from.ipfs_via.is_empty() || !routers.is_empty();
        let swarm_key = match &from.swarm_key {
            Some(p) => Some(load_swarm_key(p, Exit::Usage)?),
            None => None,
        };
        if swarm_key.is_some() && (!gateways.is_empty() || !routers.is_empty()) {
            eprintln!(
                "warning: --gateway and --routing are asked over HTTP, outside the private network"
            );
        }
        let node = if !from.peers.is_empty() || ipfs {
            let dial: Vec<Multiaddr> = from.peers.iter().chain(&from.ipfs_via).cloned().collect();
            let within = timeout.min(Duration::from_secs(20));
            Some(connect(&dial, &from.ipfs_via, within, swarm_key, keep).await?)
        } else {
            None
        };
        let sources = Sources {
            peers: !from.peers.is_empty(),
            discover: false,
            named: from
                .peers
                .iter()
                .filter_map(cairn_p2p::node::peer_of)
                .collect(),
            ipfs: ipfs.then_some(IpfsRouting {
                dht: !from.ipfs_via.is_empty(),
                routers,
                dialable: cairn_p2p::ipfs::any_address,
            }),
            gateways,
            ..Sources::default()
        };
        Ok(Self {
            store,
            node,
            sources,
            http,
            timeout,
            max_rate: from.max_rate,
        })
    }

    /// The chain for the DAG under `root`, asking the first peer asked for `below` for the
    /// DAG's structure under it.
    fn chain_below(
        &self,
        root: cairn_core::Cid,
        below: Option<cairn_core::Cid>,
    ) -> cairn_core::source::Chain {
        self.sources.chain_below(
            self.node.as_ref(),
            self.store.clone(),
            &self.http,
            root,
            below,
        )
    }

    /// A fetcher for a transfer queue over these sources.
    fn fetcher(&self) -> Arc<dyn cairn_core::transfer::Fetcher> {
        let (sources, node, store, http) = (
            self.sources.clone(),
            self.node.clone(),
            self.store.clone(),
            self.http.clone(),
        );
        Arc::new(cairn_core::transfer::ChainFetcher::new(
            self.store.clone(),
            move |root| sources.chain(node.as_ref(), store.clone(), &http, root),
        ))
    }
}

impl Fetcher {
    /// A fetch of `text` (a CID, or a path in a directory), read through (`cat`, `get`,
    /// `ls`): without a path, the first peer asked for the root is asked for the DAG's
    /// structure in one answer (with one, [`Fetcher::target`] asks for what it leads to).
    async fn start(text: &str, from: &FetchArgs) -> Result<Self, Failure> {
        let (root, path) = split_cid_path(text)?;
        let setup = Setup::new(from, from.max_rate.is_some()).await?;
        let at_root = path.split('/').all(str::is_empty);
        let chain = Arc::new(setup.chain_below(root, at_root.then_some(root)));
        Ok(Self {
            chain,
            root,
            path,
            ctx: Context::new().with_timeout(setup.timeout),
            max_rate: setup.max_rate,
            setup: Some(setup),
        })
    }

    /// Under a rate cap, fetches the DAG under `cid` into the store through a transfer
    /// queue of one (capped, retried), before it is written from there.
    async fn prefetch(&self, cid: cairn_core::Cid) -> Result<(), Failure> {
        let (Some(rate), Some(setup)) = (self.max_rate, &self.setup) else {
            return Ok(());
        };
        let (transfers, driver) =
            cairn_core::transfer::Transfers::open(Default::default(), setup.fetcher(), None)
                .await
                .map_err(|e| fail(Exit::NotWritable, e))?;
        let driver = tokio::spawn(driver);
        let id = transfers
            .add(
                cairn_core::transfer::Request::new(cid)
                    .max_rate(Some(rate))
                    .ttl(setup.timeout),
            )
            .map_err(|e| fail(Exit::Failure, e))?;
        let done = transfers.wait(id).await.map_err(|e| fail(Exit::Failure, e));
        transfers.stop();
        let _ = driver.await;
        let done = done?;
        match done.state {
            cairn_core::transfer::State::Done => Ok(()),
            _ => Err(fail(
                done.failure.map_or(Exit::Failure, Exit::of_fetch),
                done.error
                    .unwrap_or_else(|| format!("the transfer {}", done.state)),
            )),
        }
    }

    /// The CID the path leads to. When it is not the root, the chain from here on asks the
    /// first peer asked for it for the DAG's structure under it.
    async fn target(&mut self) -> Result<cairn_core::Cid, Failure> {
        let cid = dir::resolve(&*self.chain, &self.ctx, self.root, &self.path)
            .await
            .map_err(|e| fail(read_exit(&e), e))?;
        if cid != self.root
            && let Some(setup) = &self.setup
        {
            self.chain = Arc::new(setup.chain_below(self.root, Some(cid)));
        }
        Ok(cid)
    }

    async fn cat(mut self, output: Option<&Path>) -> Result<(), Failure> {
        let cid = self.target().await?;
        self.prefetch(cid).await?;
        let mut out = Output::open(output)?;
        self.write(cid, &mut out).await?;
        // `cat` gives the bytes; `get` gives a file with its mode and time.
        out.finish(dir::Metadata::default())
    }

    async fn write(&self, cid: cairn_core::Cid, out: &mut Output) -> Result<(), Failure> {
        let mut stream = std::pin::pin!(unixfs::export(
            &*self.chain,
            cid,
            Range::ALL,
            cairn_core::dag::WINDOW,
            &self.ctx
        ));
        while let Some(piece) = stream.next().await {
            let bytes = piece.map_err(|e| fail(export_exit(&e), e))?;
            out.write(&bytes)?;
        }
        Ok(())
    }

    /// The entries of the directory `cid`, each with what it is and its metadata, as they
    /// come ([`dir::ls_stat`]: the entries' root blocks are read side by side).
    fn entries(
        &self,
        cid: cairn_core::Cid,
    ) -> impl futures::Stream<Item = Result<(dir::DirEntry, dir::Kind, dir::Metadata), Failure>> + '_
    {
        dir::ls_stat(&*self.chain, &self.ctx, cid).map(|r| {
            let dir::Stat { entry, stat } = r.map_err(|e| fail(read_exit(&e), e))?;
            let (kind, meta) =
                stat.map_err(|err| fail(read_exit(&err), format!("{}: {err}", entry.name)))?;
            Ok((entry, kind, meta))
        })
    }

    async fn ls(mut self, long: bool) -> Result<(), Failure> {
        let cid = self.target().await?;
        let mut w = std::io::BufWriter::new(std::io::stdout());
        let mut entries = std::pin::pin!(self.entries(cid));
        while let Some(entry) = entries.next().await {
            let (e, k, meta) = entry?;
            let slash = if k == dir::Kind::Directory { "/" } else { "" };
            let size = e.tsize.map_or_else(|| "-".to_owned(), |t| t.to_string());
            let extra = if long {
                let mode = meta.mode.map_or_else(|| "-".into(), |m| format!("{m:04o}"));
                let mtime = meta.mtime.map_or_else(|| "-".into(), rfc3339);
                format!("{mode} {mtime} ")
            } else {
                String::new()
            };
            writeln!(w, "{} {size} {extra}{}{slash}", e.cid, e.name)
                .map_err(|e| fail(Exit::NotWritable, format!("cannot write output: {e}")))?;
        }
        w.flush()
            .map_err(|e| fail(Exit::NotWritable, format!("cannot write output: {e}")))
    }

    /// Writes the file or tree at the path to `dest`, which must not exist. Each file is
    /// complete (written under a temporary name, then renamed) or absent; names that could
    /// leave `dest` (`..`, `/`, NUL) are refused by [`dir::ls`] before anything is written.
    /// A mode or modification time the tree stores is given to what is written (the
    /// permission bits only: never setuid, setgid or sticky); directories get theirs once
    /// their contents are written.
    async fn get(mut self, dest: &Path) -> Result<(), Failure> {
        if tokio::fs::symlink_metadata(dest).await.is_ok() {
            return Err(fail(
                Exit::Usage,
                format!("{} already exists: give a new name with -o", dest.display()),
            ));
        }
        let cid = self.target().await?;
        self.prefetch(cid).await?;
        let not_writable = |p: &Path, e: std::io::Error| {
            fail(
                Exit::NotWritable,
                format!("cannot write {}: {e}", p.display()),
            )
        };
        let (kind, meta) = dir::stat(&*self.chain, &self.ctx, cid)
            .await
            .map_err(|e| fail(read_exit(&e), e))?;
        if kind != dir::Kind::Directory {
            let mut out = Output::open(Some(dest))?;
            self.write(cid, &mut out).await?;
            return out.finish(meta);
        }
        let mut stack = vec![(cid, dest.to_owned(), meta)];
        // Directories with metadata, in the order they were made: given it deepest first,
        // after everything is written (writing into a directory changes its time, and its
        // mode may forbid writing).
        let mut made = Vec::new();
        while let Some((cid, at, meta)) = stack.pop() {
            tokio::fs::create_dir(&at)
                .await
                .map_err(|e| not_writable(&at, e))?;
            if meta != dir::Metadata::default() {
                made.push((at.clone(), meta));
            }
            // Files are written FILES_AT_ONCE at a time (each a fetch of its own); a name
            // listed twice is refused rather than written over.
            let mut names = std::collections::HashSet::new();
            let (at, this) = (&at, &self);
            let mut written = std::pin::pin!(
                this.entries(cid)
                    .map(|entry| {
                        let fresh = entry
                            .as_ref()
                            .map_or(true, |(e, ..)| names.insert(e.name.clone()));
                        async move {
                            let (e, k, meta) = entry?;
                            let path = at.join(&e.name);
                            if !fresh {
                                return Err(fail(
                                    Exit::Failure,
                                    format!(
                                        "the directory for {} lists `{}` twice: it is malformed",
                                        at.display(),
                                        e.name
                                    ),
                                ));
                            }
                            match k {
                                dir::Kind::Directory => return Ok(Some((e.cid, path, meta))),
                                dir::Kind::File => {
                                    let mut out = Output::open(Some(&path))?;
                                    this.write(e.cid, &mut out).await?;
                                    out.finish(meta)?;
                                }
                                other => eprintln!(
                                    "warning: skipped {}: a {other:?} node",
                                    path.display()
                                ),
                            }
                            Ok(None)
                        }
                    })
                    .buffer_unordered(FILES_AT_ONCE)
            );
            while let Some(sub) = written.next().await {
                if let Some(sub) = sub? {
                    stack.push(sub);
                }
            }
        }
        for (at, meta) in made.iter().rev() {
            std::fs::File::open(at)
                .and_then(|f| apply_metadata(&f, meta))
                .map_err(|e| not_writable(at, e))?;
        }
        Ok(())
    }
}

/// How many files of a tree `get` writes at once.
const FILES_AT_ONCE: usize = 8;

/// Gives the open file or directory `f` the mode and modification time `meta` stores: the
/// permission bits only (setuid, setgid and sticky bits are dropped: a tree from anyone
/// must not make programs that run as its reader's owner), and the time as stored, to the
/// nanosecond.
fn apply_metadata(f: &std::fs::File, meta: &dir::Metadata) -> std::io::Result<()> {
    #[cfg(unix)]
    if let Some(mode) = meta.mode {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(mode & 0o777))?;
    }
    if let Some(t) = meta.mtime {
        let nanos = std::time::Duration::from_nanos(u64::from(t.nsecs.unwrap_or(0)));
        let secs = std::time::Duration::from_secs(t.secs.unsigned_abs());
        let at = if t.secs >= 0 {
            std::time::UNIX_EPOCH.checked_add(secs + nanos)
        } else {
            std::time::UNIX_EPOCH
                .checked_sub(secs)
                .and_then(|s| s.checked_add(nanos))
        };
        // A time the platform cannot represent is left as it is.
        if let Some(at) = at {
            f.set_times(std::fs::FileTimes::new().set_modified(at))?;
        }
    }
    Ok(())
}

/// `t` as an RFC 3339 UTC time (`2026-12-07T02:40:26Z`, with nanoseconds when stored).
fn rfc3339(t: unixfs::pb::Mtime) -> String {
    let days = t.secs.div_euclid(86_400);
    let rem = t.secs.rem_euclid(86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's days_from_civil, inverted).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let frac = t.nsecs.map_or_else(String::new, |n| format!(".{n:09}"));
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{frac}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Stdout, or a file written under a temporary name and renamed when complete.
enum Output {
    Stdout(std::io::BufWriter<std::io::Stdout>),
    File {
        tmp: Partial,
        dest: PathBuf,
        file: std::io::BufWriter<std::fs::File>,
    },
}

/// A partial output file, removed unless the output completes.
struct Partial(Option<PathBuf>);

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Output {
    fn open(path: Option<&Path>) -> Result<Self, Failure> {
        let Some(dest) = path else {
            return Ok(Output::Stdout(std::io::BufWriter::new(std::io::stdout())));
        };
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dest.with_file_name(format!(".{name}.cairn-partial-{}", std::process::id()));
        let file = std::fs::File::create(&tmp).map_err(|e| {
            fail(
                Exit::NotWritable,
                format!("cannot write {}: {e}", dest.display()),
            )
        })?;
        Ok(Output::File {
            tmp: Partial(Some(tmp)),
            dest: dest.to_owned(),
            file: std::io::BufWriter::new(file),
        })
    }

    fn write(&mut self, b: &[u8]) -> Result<(), Failure> {
        let r = match self {
            Output::Stdout(w) => w.write_all(b),
            Output::File { file, .. } => file.write_all(b),
        };
        r.map_err(|e| fail(Exit::NotWritable, format!("cannot write output: {e}")))
    }

    /// Completes the output; a file gets `meta`'s mode and time first (see [`apply_metadata`]).
    fn finish(self, meta: dir::Metadata) -> Result<(), Failure> {
        match self {
            Output::Stdout(mut w) => w
                .flush()
                .map_err(|e| fail(Exit::NotWritable, format!("cannot write output: {e}"))),
            Output::File {
                mut tmp,
                dest,
                file,
            } => {
                let path = tmp.0.clone().unwrap_or_default();
                file.into_inner()
                    .map_err(|e| e.into_error())
                    .and_then(|f| {
                        apply_metadata(&f, &meta)?;
                        f.sync_all()
                    })
                    .and_then(|()| std::fs::rename(&path, &dest))
                    .map_err(|e| {
                        fail(
                            Exit::NotWritable,
                            format!("cannot write {}: {e}", dest.display()),
                        )
                    })?;
                tmp.0 = None;
                Ok(())
            }
        }
    }
}

/// The optional TOML file of `serve --config` (every key optional; see docs/cli.md).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Vec<Multiaddr>>,
    http: Option<std::net::SocketAddr>,
    identity: Option<PathBuf>,
    web_root: Option<PathBuf>,
    store: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    bootstrap: Option<Vec<Multiaddr>>,
    ipfs_dht: Option<bool>,
    no_relay: Option<bool>,
    no_mdns: Option<bool>,
    upnp: Option<bool>,
    relays: Option<Vec<Multiaddr>>,
    swarm_key: Option<PathBuf>,
    max_serve_rate: Option<String>,
    #[serde(default)]
    limits: FileLimits,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_reservations: Option<usize>,
    max_reservations_per_peer: Option<usize>,
    reservation_duration_secs: Option<u64>,
    max_circuits: Option<usize>,
    max_circuits_per_peer: Option<usize>,
    max_circuit_duration_secs: Option<u64>,
    max_circuit_bytes: Option<u64>,
    reservations_per_peer_burst: Option<u32>,
    reservations_per_ip_burst: Option<u32>,
    circuits_per_peer_burst: Option<u32>,
    circuits_per_ip_burst: Option<u32>,
    rate_interval_secs: Option<u64>,
    shutdown_grace_secs: Option<u64>,
    answer_bytes_per_peer: Option<usize>,
    answer_bytes_total: Option<usize>,
    stall_timeout_secs: Option<u64>,
    stream_receive_window: Option<u32>,
    dht_records_per_peer: Option<usize>,
    dht_records_total: Option<usize>,
}

fn read_config(path: &Path) -> Result<FileConfig, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(
            Exit::CannotStart,
            format!("cannot read config file {}: {e}", path.display()),
        )
    })?;
    toml::from_str(&text).map_err(|e| {
        fail(
            Exit::CannotStart,
            format!("config file {}: {e}", path.display()),
        )
    })
}

async fn serve(args: ServeArgs) -> Result<(), Failure> {
    let file = match &args.config {
        Some(p) => read_config(p)?,
        None => FileConfig::default(),
    };
    let identity = args
        .identity
        .or(file.identity)
        .unwrap_or_else(|| data_dir().join("identity.key"));
    let key = crate::identity::load_or_create(&identity).map_err(|e| fail(Exit::CannotStart, e))?;
    let webrtc = crate::node::load_or_create_webrtc_cert(&identity.with_extension("webrtc.pem"))
        .map_err(|e| fail(Exit::CannotStart, e))?;
    let tls = match (
        args.tls_cert.or(file.tls_cert),
        args.tls_key.or(file.tls_key),
    ) {
        (Some(cert), Some(key)) => Some(
            crate::node::Tls::from_pem_files(&cert, &key)
                .map_err(|e| fail(Exit::CannotStart, e))?,
        ),
        (None, None) => None,
        _ => {
            return Err(fail(
                Exit::Usage,
                "give both tls_cert and tls_key, or neither",
            ));
        }
    };
    let swarm_key = match args.swarm_key.or(file.swarm_key) {
        Some(p) => Some(load_swarm_key(&p, Exit::CannotStart)?),
        None => None,
    };
    if swarm_key.is_some() && (args.ipfs_dht || file.ipfs_dht == Some(true)) {
        return Err(fail(
            Exit::Usage,
            "--ipfs-dht joins the public IPFS network, which a private network (--swarm-key) cannot reach: give one or the other",
        ));
    }
    let store = match args.store.or(file.store) {
        Some(dir) => Some(
            Disk::open(&dir)
                .await
                .map_err(|e| fail(Exit::NotWritable, e))?,
        ),
        None => None,
    };
    let mut config = crate::relay::Config {
        web_root: args.web_root.or(file.web_root),
        store,
        webrtc: Some(webrtc),
        ..Default::default()
    };
    if let Some(k) = &swarm_key {
        config.listen = crate::relay::default_listen_private();
        tracing::info!(fingerprint = %k.fingerprint(), "in a private network: only peers with its swarm key connect");
    }
    config.swarm_key = swarm_key;
    if tls.is_some() {
        config.listen.push(crate::relay::default_tls_listen());
    }
    config.tls = tls;
    if let Some(http) = args.http.or(file.http) {
        config.http = http;
    }
    if !args.listen.is_empty() {
        config.listen = args.listen;
    } else if let Some(listen) = file.listen {
        config.listen = listen;
    }
    if !args.bootstrap.is_empty() {
        config.bootstrap = args.bootstrap;
    } else if let Some(bootstrap) = file.bootstrap {
        config.bootstrap = bootstrap;
    }
    config.relay_server = !(args.no_relay || file.no_relay == Some(true));
    // Nodes look for peers on their LAN; relays, on public hosts, do not.
    config.nat.mdns = !(config.relay_server || args.no_mdns || file.no_mdns == Some(true));
    config.nat.upnp = args.upnp || file.upnp == Some(true);
    if !args.relays.is_empty() {
        config.relays = args.relays;
    } else if let Some(relays) = file.relays {
        config.relays = relays;
    }
    if (args.ipfs_dht || file.ipfs_dht == Some(true)) && config.bootstrap.is_empty() {
        config.bootstrap = cairn_p2p::ipfs::public_bootstrap();
    }
    let l = file.limits;
    let secs = Duration::from_secs;
    macro_rules! set {
        ($field:ident) => {
            if let Some(v) = l.$field {
                config.$field = v;
            }
        };
        ($field:ident, $from:ident, $conv:expr) => {
            if let Some(v) = l.$from {
                config.$field = $conv(v);
            }
        };
    }
    set!(max_reservations);
    set!(max_reservations_per_peer);
    set!(reservation_duration, reservation_duration_secs, secs);
    set!(max_circuits);
    set!(max_circuits_per_peer);
    set!(max_circuit_duration, max_circuit_duration_secs, secs);
    set!(max_circuit_bytes);
    set!(reservations_per_peer_burst);
    set!(reservations_per_ip_burst);
    set!(circuits_per_peer_burst);
    set!(circuits_per_ip_burst);
    set!(rate_interval, rate_interval_secs, secs);
    set!(shutdown_grace, shutdown_grace_secs, secs);
    if let Some(v) = l.answer_bytes_per_peer {
        config.answers.per_asker = v;
    }
    if let Some(v) = l.answer_bytes_total {
        config.answers.total = v;
    }
    if let Some(v) = l.stall_timeout_secs {
        config.answers.stall_timeout = secs(v);
    }
    config.answers.serve_rate = match (args.max_serve_rate, &file.max_serve_rate) {
        (Some(r), _) => Some(r),
        (None, Some(text)) => Some(text.parse().map_err(|e| {
            fail(
                Exit::CannotStart,
                format!("config file: max_serve_rate: {e}"),
            )
        })?),
        (None, None) => None,
    };
    if let Some(v) = l.stream_receive_window {
        config.receive_window = v;
    }
    if let Some(v) = l.dht_records_per_peer {
        config.dht.per_provider = v;
    }
    if let Some(v) = l.dht_records_total {
        config.dht.total_providers = v;
    }
    if let Some(total) = args.pin_quota {
        if config.store.is_none() {
            return Err(fail(
                Exit::Usage,
                "--pin-quota keeps content for others in the store: give --store too",
            ));
        }
        let per_peer = args.pin_quota_per_peer.unwrap_or((1 << 30).min(total));
        config.pinning = Some(cairn_p2p::pinning::Policy {
            total,
            per_requester: per_peer,
            trusted: (!args.pin_trust.is_empty()).then(|| args.pin_trust.iter().copied().collect()),
            ..Default::default()
        });
    } else if args.pin_quota_per_peer.is_some() || !args.pin_trust.is_empty() {
        return Err(fail(
            Exit::Usage,
            "--pin-quota-per-peer and --pin-trust need --pin-quota (the total kept for others)",
        ));
    }
    let running = crate::relay::start(key, config)
        .await
        .map_err(|e| fail(Exit::CannotStart, e))?;
    tracing::info!(peer_id = %running.peer_id, "relay started");
    for a in &running.addrs {
        println!("{a}");
    }
    let _ = std::io::stdout().flush();
    eprintln!("serving the web app on http://{}/", running.http);
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
