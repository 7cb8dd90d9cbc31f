//! `wabulk`: the command line (CONTRACT §7). Each subcommand is a thin layer
//! over the library crates; the data path is wired in one place per mode.

mod config;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(name = "wabulk", version, about = "Bulk sender for the WhatsApp Cloud API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine: consume jobs from Kafka, send them, write results.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The whole system on this machine with no set-up, with a summary at the end.
    Demo,
    /// The Graph API simulator alone (HTTP/1.1 and HTTP/2 cleartext).
    Simulate,
    /// Write jobs to Kafka at a target rate.
    Loadgen,
    /// Validate a configuration and print the effective one, secrets masked.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::CheckConfig { config } => {
            let loaded = Config::load(&config, std::env::vars())
                .with_context(|| format!("configuration {} is not valid", config.display()))?;
            print!("{}", loaded.render_masked(&|var| std::env::var(var).ok()));
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { .. } | Command::Demo | Command::Simulate | Command::Loadgen => {
            eprintln!("not implemented yet");
            Ok(ExitCode::from(2))
        }
    }
}
