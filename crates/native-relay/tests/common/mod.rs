//! Helpers shared by cairn-relay's integration tests (each test file uses what it needs).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command};
use std::sync::mpsc;

/// The `cairn-relay` binary, quiet, with no store from the environment.
pub(crate) fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn-relay"));
    c.env("CAIRN_LOG", "warn").env_remove("CAIRN_STORE");
    c
}

/// Kills the process when dropped, so a failing test leaves no stray relay behind.
pub(crate) struct Kill(pub(crate) Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines of `r`, read on a thread, so a test can wait for one with a timeout.
pub(crate) fn lines(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}
