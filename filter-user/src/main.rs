//! The `mxguard` binary: parse the command line, validate it, run.
use std::process::ExitCode;

use std::io::IsTerminal as _;

use clap::{CommandFactory as _, FromArgMatches as _};
use filter_user::{
    cli::{Cli, Command},
    config,
};

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli, &matches) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mxguard: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli, matches: &clap::ArgMatches) -> anyhow::Result<()> {
    // The flags as given, kept so that a reload applies them over the re-read file again.
    let sub_matches = matches
        .subcommand()
        .map(|(_, m)| m.clone())
        .expect("a subcommand is required");
    match cli.command {
        Command::Run(_) => {
            let plan = config::plan(&sub_matches)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(filter_user::daemon::run(plan, move || {
                config::plan(&sub_matches)
            }))
        }
        Command::CheckConfig(_) => {
            let plan = config::plan(&sub_matches)?;
            print!("{}", config::render(&plan)?);
            eprintln!("configuration is valid");
            Ok(())
        }
        Command::Detach(args) => {
            let pins = filter_user::links::PinDir::new(&args.pins.pin_dir);
            let detached = filter_user::links::detach_pinned(&pins, args.iface.as_deref())?;
            for iface in detached {
                println!("detached {iface}");
            }
            Ok(())
        }
        Command::GenerateDocs { dir } => {
            filter_user::manuals::generate(&dir)?;
            eprintln!("man pages and completions written to {}", dir.display());
            Ok(())
        }
        Command::Status(args) => {
            let status = match filter_user::status::read_status(
                &args.pins.pin_dir,
                args.interval,
                &args.state_dir,
            ) {
                Ok(status) => status,
                // Milter-only mode pins nothing: its counters are all there is to show.
                Err(error) => match filter_user::status::read_milter_status(&args.state_dir) {
                    Some(milter) if args.json => {
                        let value = serde_json::json!({ "pin_dir": null, "milter": milter });
                        println!("{}", serde_json::to_string_pretty(&value)?);
                        return Ok(());
                    }
                    Some(milter) => {
                        // Whatever stopped the XDP read (nothing pinned, or an error) is said.
                        eprintln!("XDP filter: no status ({error:#})");
                        print!("{}", filter_user::status::render_milter(&milter));
                        return Ok(());
                    }
                    None => return Err(error),
                },
            };
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", filter_user::status::render(&status));
            }
            Ok(())
        }
    }
}
