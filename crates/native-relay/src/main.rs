//! The `cairn-relay` binary: everything lives in the library (`cairn_relay::cli`).

fn main() -> std::process::ExitCode {
    cairn_relay::cli::main()
}
