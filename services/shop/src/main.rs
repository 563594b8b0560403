//! `shop`: the whole commerce system in one command.
//!
//! ```text
//! shop                      every service in this process, on the embedded default
//! shop --production         the same on PostgreSQL, NATS JetStream, Redis and RabbitMQ
//! shop demo                 the scripted walk-through, against a running system
//! shop demo --start         the same, with a system of its own started first
//! ```

#![expect(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool: what it prints is for the person who ran it"
)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use shop::{Options, System};

/// The mainstay commerce system: every service in one process.
#[derive(Debug, Parser)]
#[command(name = "shop", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    system: SystemArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Walks through the system, through its gateway: sign up, search, cart, checkout, and
    /// the failures; exits non-zero on the first answer that is not the one promised.
    Demo {
        /// Start a system first (on the embedded default, or --production), and stop it after.
        #[arg(long)]
        start: bool,
        /// The gateway of the running system (without --start).
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        #[command(flatten)]
        system: SystemArgs,
    },
}

#[derive(Debug, Clone, Args)]
struct SystemArgs {
    /// Run on PostgreSQL (`DATABASE_URL`, a database `shop_<service>` per service, created when
    /// missing), NATS JetStream (`NATS_URL`), Redis (`REDIS_URL`) and RabbitMQ (`AMQP_URL`), each defaulting to this
    /// machine's standard port.
    #[arg(long)]
    production: bool,
    /// Where the embedded default keeps its SQLite files and keys (and production its keys).
    #[arg(long, default_value = "shop-data")]
    data: PathBuf,
    /// The gateway's port.
    #[arg(long, default_value_t = 8080)]
    port: u16,
}

/// How long each service may take to finish what it is doing when stopped.
const GRACE: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The services log warnings and errors; the launcher prints what a person needs. The
    // demo's own system logs errors only: the demo provokes failures, and says what they are.
    let quiet = matches!(cli.command, Some(Command::Demo { start: true, .. }));
    let default = if quiet { "error" } else { "warn" };
    let _telemetry = mainstay_telemetry::Config::new("shop")
        .filter(std::env::var("RUST_LOG").unwrap_or_else(|_| default.to_owned()))
        .format(mainstay_telemetry::LogFormat::Pretty)
        .init();
    match cli.command {
        None => match start(&cli.system).await {
            Ok(system) => {
                shop_common::shutdown_signal().await;
                println!("\nStopping: the gateway first, then each service, finishing its work…");
                system.stop(GRACE).await;
                println!("Stopped.");
                ExitCode::SUCCESS
            }
            Err(error) => fail(&error),
        },
        Some(Command::Demo {
            start: false, url, ..
        }) => demo(&url, None).await,
        Some(Command::Demo {
            start: true,
            system,
            ..
        }) => match self::start(&SystemArgs {
            // Any free port: the demo's system is its own.
            port: 0,
            ..system
        })
        .await
        {
            Ok(mut running) => {
                let url = running.url();
                let code = demo(&url, Some(&mut running)).await;
                running.stop(GRACE).await;
                code
            }
            Err(error) => fail(&error),
        },
    }
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("shop: {error}");
    ExitCode::FAILURE
}

async fn demo(url: &str, system: Option<&mut System>) -> ExitCode {
    match shop::demo::run(url, std::io::stdout(), shop::demo::on_terminal(), system).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&format!("the demo failed: {error}")),
    }
}

/// Starts the system as `args` say, and says where it is.
async fn start(args: &SystemArgs) -> std::io::Result<System> {
    std::fs::create_dir_all(&args.data)?;
    let admin_password = shop::launcher::admin_password(&args.data)?;
    let options = if args.production {
        let env =
            |var: &str, default: &str| std::env::var(var).unwrap_or_else(|_| default.to_owned());
        let server = env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        );
        let databases = shop::launcher::databases(&server).await?;
        Options::production(
            databases,
            &env("NATS_URL", "nats://127.0.0.1:4222"),
            &env("REDIS_URL", "redis://127.0.0.1:6379"),
            &env("MESSAGING_NAMESPACE", "shop"),
            &args.data,
        )?
        .var("AMQP_URL", env("AMQP_URL", "amqp://127.0.0.1:5672/%2f"))
    } else {
        Options::embedded(&args.data)?
    };
    let mut options = options.var("ADMIN_PASSWORD_FILE", admin_password.display().to_string());
    options.gateway_port = args.port;
    let system = System::start(options).await?;
    let url = system.url();
    let mode = if args.production {
        "production: PostgreSQL, NATS JetStream, Redis, RabbitMQ"
    } else {
        "embedded default: SQLite, in-process bus, in-memory cache and carts"
    };
    let password = std::fs::read_to_string(&admin_password)?;
    println!(
        "\nThe shop is running ({mode}), its data in {data}.\n\n  \
         gateway     {url}/api/v1\n  \
         swagger ui  {url}/docs\n  \
         ops console {url}/console (sign in as the admin)\n  \
         home page   {url}/api/v1/home\n  \
         messages    {data}/sent/<channel>.jsonl (what notifications sent)\n\n  \
         demo accounts\n    \
         alice@example.com   alice-in-wonderland   (customer)\n    \
         admin@example.com   {password}   (admin; in {file})\n\n\
         Try `cargo run -p shop -- demo` in another terminal. Ctrl-C stops everything.",
        data = args.data.display(),
        password = password.trim(),
        file = admin_password.display(),
    );
    Ok(system)
}
