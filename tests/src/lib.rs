//! Helpers for the scenario tests in `tests/tests/`.
