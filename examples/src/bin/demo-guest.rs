//! The demo guest as a standalone binary; see `runner_examples::demo_guest`.

fn main() -> std::process::ExitCode {
    runner_examples::demo_guest::run_with(std::env::args().skip(1).collect(), &[])
}
