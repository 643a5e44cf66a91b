//! The `mxguard` binary: parse the command line, validate it, run.
use std::process::ExitCode;

use std::io::IsTerminal as _;

use clap::Parser as _;
use filter_user::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mxguard: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let plan = args.plan()?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(filter_user::daemon::run(plan))
        }
        Command::Detach(args) => {
            let detached = filter_user::status::detach(&args.pins.pin_dir, args.iface.as_deref())?;
            for iface in detached {
                println!("detached {iface}");
            }
            Ok(())
        }
        Command::Status(args) => {
            let status = filter_user::status::read_status(&args.pins.pin_dir, args.interval)?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", filter_user::status::render(&status));
            }
            Ok(())
        }
    }
}
