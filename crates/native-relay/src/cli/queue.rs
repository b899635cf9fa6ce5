//! `cairn-relay queue`: a file of CIDs fetched through the transfer queue
//! ([`cairn_core::transfer`]), kept in the store (`transfers`) so that an interrupted run
//! resumes where it stopped.

use std::collections::BTreeSet;
use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

use cairn_core::source::{Failure as Fetch, SourceKind};
use cairn_core::transfer::{self, Priority, Rate, Request, State, Status, Transfers};
use futures::StreamExt;

use super::{Exit, Failure, FetchArgs, Setup, fail};

/// How often an active transfer's progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// One line of a queue file: `CID [PRIORITY] [max-rate=RATE] [sources=LIST] [ttl=SECS]`
/// (`None`: blank or a comment).
pub(super) fn parse_line(line: &str, default: Priority) -> Result<Option<Request>, String> {
    let line = line.split('#').next().unwrap_or("").trim();
    if line.is_empty() {
        return Ok(None);
    }
    let mut words = line.split_whitespace();
    let first = words.next().unwrap_or("");
    let (text, path) = cairn_core::unixfs::dir::split_target(first);
    if !path.is_empty() {
        return Err(format!(
            "`{first}` is a path: a queue takes CIDs (`cairn-relay ls` tells what a path leads to)"
        ));
    }
    let root = cairn_core::cid::parse(text).map_err(|e| e.to_string())?;
    let mut request = Request::new(root).priority(default);
    let mut seen = BTreeSet::new();
    for w in words {
        let (key, value) = w.split_once('=').unwrap_or(("priority", w));
        if !seen.insert(key) {
            return Err(format!("`{key}` is given twice"));
        }
        match key {
            "priority" => {
                request.priority = value.parse().map_err(|e: transfer::Error| e.to_string())?
            }
            "max-rate" => {
                request.max_rate = Some(value.parse::<Rate>().map_err(|e| e.to_string())?);
            }
            "sources" => {
                let mut kinds = Vec::new();
                for name in value.split(',') {
                    let kind = SourceKind::ALL
                        .into_iter()
                        .find(|k| k.as_str() == name)
                        .ok_or_else(|| {
                            format!("`{name}` is not a source: use local, peers, ipfs or gateway")
                        })?;
                    kinds.push(kind);
                }
                request.sources = kinds;
            }
            "ttl" => {
                let secs: u64 = value.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    format!("ttl=`{value}` is not a whole number of seconds above 0")
                })?;
                request = request.ttl(Duration::from_secs(secs));
            }
            other => {
                return Err(format!(
                    "`{other}` is not understood: a line is CID [critical|high|normal|low] [max-rate=RATE] [sources=LIST] [ttl=SECS]"
                ));
            }
        }
    }
    Ok(Some(request))
}

/// Reads a queue file; lines it cannot read are reported with their number and left out.
fn read_file(path: &Path, default: Priority) -> Result<(Vec<Request>, usize), Failure> {
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(path).map_err(|e| {
            fail(
                Exit::Unreadable,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut requests = Vec::new();
    let mut refused = 0;
    for (n, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| {
            fail(
                Exit::Unreadable,
                format!("{}:{}: {e}", path.display(), n + 1),
            )
        })?;
        match parse_line(&line, default) {
            Ok(Some(r)) => requests.push(r),
            Ok(None) => {}
            Err(why) => {
                refused += 1;
                eprintln!("warning: {}:{}: {why}; skipped", path.display(), n + 1);
            }
        }
    }
    Ok((requests, refused))
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// A transfer's progress, for a person.
fn describe(s: &Status) -> String {
    let p = &s.progress;
    let mut out = format!(
        "#{} {} {}: {:.1} of {:.1} MiB",
        s.id,
        s.request.root,
        s.state,
        mib(p.bytes_done),
        mib(p.bytes_total)
    );
    if s.speed > 0.0 {
        out.push_str(&format!(", {:.1} MiB/s", s.speed / (1024.0 * 1024.0)));
    }
    if let Some(eta) = s.eta {
        out.push_str(&format!(", ETA {} s", eta.as_secs()));
    }
    let by: Vec<String> = SourceKind::ALL
        .iter()
        .zip(p.by_source)
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if !by.is_empty() {
        out.push_str(&format!(" (blocks: {})", by.join(", ")));
    }
    if s.attempts > 1 {
        out.push_str(&format!(", attempt {}", s.attempts));
    }
    if let (State::Retrying, Some(e)) = (s.state, &s.error) {
        out.push_str(&format!(
            "; retrying in {} s: {e}",
            s.retry_in.unwrap_or_default().as_secs()
        ));
    }
    out
}

/// Runs the queue: what the store's journal holds, then `file`'s lines; returns once none
/// is waiting or running (paused ones stay in the journal).
pub(super) async fn run(
    file: Option<&Path>,
    from: &FetchArgs,
    concurrency: usize,
    priority: Priority,
    pin: bool,
) -> Result<(), Failure> {
    if concurrency == 0 {
        return Err(fail(Exit::Usage, "--concurrency must be at least 1"));
    }
    let (requests, refused) = match file {
        Some(f) => read_file(f, priority)?,
        None => (Vec::new(), 0),
    };
    let setup = Setup::new(from, true).await?;
    let config = transfer::Config {
        concurrency,
        max_rate: setup.max_rate,
        retry: transfer::Retry {
            // A peer that went away is dialed again with backoff: give it time to be back
            // before "nobody has it" is believed.
            not_found_attempts: 3,
            first: Duration::from_secs(2),
            ..Default::default()
        },
        ..Default::default()
    };
    let journal = setup.store.transfer_journal();
    let (transfers, driver) =
        Transfers::open(config, setup.fetcher(), Some(std::sync::Arc::new(journal)))
            .await
            .map_err(|e| fail(Exit::NotWritable, e))?;
    let mut updates = transfers.subscribe();
    let driver = tokio::spawn(driver);
    let resumed = transfers.list().len();
    if resumed > 0 {
        eprintln!(
            "resuming {resumed} transfer(s) left in {}",
            setup.store.path().join("transfers").display()
        );
    }
    for r in requests {
        if let Err(e) = transfers.add(r) {
            eprintln!("warning: {e}");
        }
    }
    let outcome = tokio::select! {
        o = watch(&transfers, &mut updates) => Some(o),
        _ = super::shutdown_signal() => None,
    };
    transfers.stop();
    let _ = driver.await;
    let Some(finished) = outcome else {
        let left = transfers
            .list()
            .iter()
            .filter(|s| !s.state.finished())
            .count();
        return Err(fail(
            Exit::Failure,
            format!(
                "interrupted: {left} transfer(s) kept in {}; run `cairn-relay queue` with the same --store to resume",
                setup.store.path().join("transfers").display()
            ),
        ));
    };
    let mut stdout = std::io::stdout().lock();
    let mut worst: Option<Exit> = None;
    for s in &finished {
        let line = match s.state {
            State::Done => {
                if pin {
                    setup
                        .store
                        .pin(&s.request.root)
                        .await
                        .map_err(|e| fail(Exit::NotWritable, e))?;
                }
                format!("{} done", s.request.root)
            }
            State::Failed => {
                let exit = s.failure.map_or(Exit::Failure, |f| match f {
                    Fetch::Timeout => Exit::Failure,
                    f => Exit::of_fetch(f),
                });
                worst.get_or_insert(exit);
                format!(
                    "{} failed: {}",
                    s.request.root,
                    s.error.as_deref().unwrap_or("unknown")
                )
            }
            other => format!("{} {other}", s.request.root),
        };
        let _ = writeln!(stdout, "{line}");
    }
    let _ = stdout.flush();
    match (worst, refused) {
        (Some(exit), _) => Err(fail(exit, "some transfers failed (see above)")),
        (None, 0) => Ok(()),
        (None, n) => Err(fail(
            Exit::Usage,
            format!(
                "{n} line(s) of the queue file were refused (see the warnings above); the rest are done"
            ),
        )),
    }
}

/// Prints progress until nothing is waiting or running; the transfers as they ended.
async fn watch(
    transfers: &Transfers,
    updates: &mut futures::channel::mpsc::Receiver<transfer::Update>,
) -> Vec<Status> {
    let mut printed = std::collections::HashMap::<u64, (State, cairn_core::rt::Instant)>::new();
    loop {
        let all = transfers.list();
        let busy = all
            .iter()
            .any(|s| matches!(s.state, State::Queued | State::Active | State::Retrying));
        if !busy {
            // The last updates may still be in the channel when the list already shows
            // every transfer ended: print each final state that was not printed yet.
            for s in &all {
                if printed.get(&s.id).map(|(state, _)| *state) != Some(s.state) {
                    eprintln!("{}", describe(s));
                }
            }
            return all;
        }
        let Some(u) = updates.next().await else {
            return transfers.list();
        };
        let now = cairn_core::rt::Instant::now();
        let show = match printed.get(&u.id) {
            Some((state, at)) => {
                *state != u.state || now.saturating_duration_since(*at) >= PROGRESS_EVERY
            }
            None => true,
        };
        if show {
            printed.insert(u.id, (u.state, now));
            eprintln!("{}", describe(&u));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";

    #[test]
    fn queue_lines_are_read_or_refused_with_the_reason() {
        let r = parse_line(
            &format!("{CID} high max-rate=2MiB sources=gateway,peers ttl=60 # x"),
            Priority::Low,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.priority, Priority::High);
        assert_eq!(r.max_rate, Rate::new(2 << 20));
        assert_eq!(r.sources, [SourceKind::Gateway, SourceKind::Peers]);
        assert!(r.deadline.is_some());
        let plain = parse_line(&format!("/ipfs/{CID}"), Priority::Low)
            .unwrap()
            .unwrap();
        assert_eq!(plain.priority, Priority::Low, "the default");
        assert_eq!(parse_line("   # a comment", Priority::Low), Ok(None));
        assert_eq!(parse_line("", Priority::Low), Ok(None));
        for (bad, says) in [
            ("not-a-cid", "CID"),
            (&format!("{CID}/a/b") as &str, "is a path"),
            (&format!("{CID} urgent"), "not a priority"),
            (&format!("{CID} max-rate=0"), "at least 1 byte"),
            (&format!("{CID} max-rate=-3M"), "at least 1 byte"),
            (&format!("{CID} sources=bittorrent"), "not a source"),
            (&format!("{CID} ttl=0"), "whole number"),
            (&format!("{CID} high low"), "twice"),
            (&format!("{CID} colour=red"), "not understood"),
        ] {
            let e = parse_line(bad, Priority::Normal).unwrap_err();
            assert!(
                e.to_lowercase().contains(&says.to_lowercase()),
                "{bad}: {e}"
            );
        }
    }
}
