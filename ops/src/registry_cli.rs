//! `dhanman registry users add|list|revoke`: who may change the embedded schema registry.
//! Writes to it (register, delete, config, mode, import) need HTTP basic auth as one of
//! these users; reads are open.

use anyhow::bail;
use dhanman_registry::users;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// The registry's users.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
}

#[derive(Debug, clap::Subcommand)]
enum UsersCommand {
    /// Makes a user and prints `name:secret` once (what clients send as
    /// `basic.auth.user.info`, or `SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO`).
    Add {
        name: String,
        #[command(flatten)]
        database_url: crate::DatabaseUrl,
    },
    /// Lists the users (never their secrets).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        database_url: crate::DatabaseUrl,
    },
    /// Revokes a user: its writes are refused from now on.
    Revoke {
        name: String,
        #[command(flatten)]
        database_url: crate::DatabaseUrl,
    },
}

async fn pool(url: &crate::DatabaseUrl) -> anyhow::Result<sqlx::PgPool> {
    url.pool().await
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let Command::Users { command } = args.command;
    match command {
        UsersCommand::Add { name, database_url } => {
            let user_info = users::add(&pool(&database_url).await?, &name).await?;
            println!("{user_info}");
            eprintln!("registry user {name} added; the secret is shown only now");
        }
        UsersCommand::List { json, database_url } => {
            let all = users::list(&pool(&database_url).await?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for u in &all {
                    let state = match u.revoked_at {
                        Some(at) => format!("revoked {}", at.format("%Y-%m-%d %H:%M:%S")),
                        None => "active".into(),
                    };
                    println!(
                        "{:<32} {:<28} created {}",
                        u.name,
                        state,
                        u.created_at.format("%Y-%m-%d %H:%M:%S")
                    );
                }
            }
        }
        UsersCommand::Revoke { name, database_url } => {
            if !users::revoke(&pool(&database_url).await?, &name).await? {
                bail!("no active registry user {name}");
            }
            eprintln!("registry user {name} revoked");
        }
    }
    Ok(())
}
