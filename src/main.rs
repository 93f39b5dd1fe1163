//! The `meter-sync` binary: parse the command line, then hand over to the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = meter_sync::surface::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("meter-sync: cannot start the async runtime: {e}");
            return meter_sync::error::Exit::Failed.into();
        }
    };
    runtime.block_on(meter_sync::surface::cli::run(cli))
}
