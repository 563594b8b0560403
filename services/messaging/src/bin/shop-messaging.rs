//! `shop-messaging`: the operator's command for the event backbone's dead letters.
//!
//! ```text
//! shop-messaging dlq list <consumer> [--limit N]
//! shop-messaging dlq replay <consumer> [--seq N]
//! ```
//!
//! The transport is the services' own: `NATS_URL` (and `MESSAGING_NAMESPACE`) for JetStream,
//! otherwise the local transport on `BUS_DATABASE_URL`.

// A command-line tool: what it prints is its interface.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use shop_messaging::config::TransportConfig;

const USAGE: &str = "usage:
  shop-messaging dlq list <consumer> [--limit N]    the consumer's dead letters, oldest first
  shop-messaging dlq replay <consumer> [--seq N]    deliver dead letter N again, or the oldest
                                                   1 000 (run it again for the rest)

The transport: NATS_URL (with MESSAGING_NAMESPACE, default shop) for JetStream, otherwise the
local transport on BUS_DATABASE_URL (default sqlite://bus.db?mode=rwc).";

/// What was asked for.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    List { consumer: String, limit: usize },
    Replay { consumer: String, seq: Option<i64> },
}

fn parse(args: &[String]) -> Result<Command, String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let number = |flag: &str, value: Option<&&str>| -> Result<i64, String> {
        value
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag} takes a positive number"))
    };
    match args.as_slice() {
        ["dlq", "list", consumer, rest @ ..] => {
            let limit = match rest {
                [] => 100,
                ["--limit", value] => {
                    usize::try_from(number("--limit", Some(value))?).map_err(|e| e.to_string())?
                }
                _ => return Err(USAGE.to_owned()),
            };
            Ok(Command::List {
                consumer: (*consumer).to_owned(),
                limit,
            })
        }
        ["dlq", "replay", consumer, rest @ ..] => {
            let seq = match rest {
                [] => None,
                ["--seq", value] => Some(number("--seq", Some(value))?),
                _ => return Err(USAGE.to_owned()),
            };
            Ok(Command::Replay {
                consumer: (*consumer).to_owned(),
                seq,
            })
        }
        _ => Err(USAGE.to_owned()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse(&args) {
        Ok(command) => command,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let config = match TransportConfig::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(78);
        }
    };
    let transport = match config.open().await {
        Ok(transport) => transport,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let done =
        match command {
            Command::List { consumer, limit } => transport
                .dead_letters(&consumer, limit)
                .await
                .map(|letters| {
                    if letters.is_empty() {
                        println!("no dead letters for {consumer}");
                    }
                    for letter in letters {
                        let id = letter
                            .message_id
                            .map_or_else(|| "-".to_owned(), |id| id.to_string());
                        println!(
                            "{seq}\t{subject}\t{id}\tdelivered {delivered}\t{reason}",
                            seq = letter.seq,
                            subject = letter.subject,
                            delivered = letter.delivered,
                            reason = letter.reason,
                        );
                    }
                }),
            Command::Replay { consumer, seq } => match transport.replay(&consumer, seq).await {
                Ok(count) => {
                    let left = transport.dead_letter_count(&consumer).await;
                    match left {
                        Ok(left) if left > 0 => {
                            println!("replayed {count} to {consumer} ({left} still dead letters)");
                        }
                        _ => println!("replayed {count} to {consumer}"),
                    }
                    Ok(())
                }
                Err(error) => Err(error),
            },
        };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
