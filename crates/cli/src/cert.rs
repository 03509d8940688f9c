//! `shoal cert`: makes a cluster CA, node certificates and client certificates in a
//! certificates directory (see `shoal_server::certs`), and lists what is there with the
//! days each has left.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use shoal_server::certs;

#[derive(Args, Debug)]
pub struct CertArgs {
    /// The certificates directory.
    #[arg(long, env = "SHOAL_CERTS_DIR", default_value = "certs", global = true)]
    certs_dir: PathBuf,
    /// Lifetime of the new certificate, days [default: 3650 for a CA, 365 otherwise]
    #[arg(long, global = true)]
    lifetime_days: Option<i64>,
    #[command(subcommand)]
    command: CertCommand,
}

#[derive(Subcommand, Debug)]
enum CertCommand {
    /// A new cluster CA: ca.crt and ca.key (never overwritten).
    CreateCa,
    /// node.crt and node.key for the host names and addresses the node is reached at.
    CreateNode {
        #[arg(required = true)]
        hosts: Vec<String>,
    },
    /// client.<user>.crt and client.<user>.key.
    CreateClient { user: String },
    /// Every certificate in the directory, soonest expiry first.
    Ls,
}

pub fn run(args: CertArgs) -> Result<(), String> {
    let dir = &args.certs_dir;
    let days = |default| args.lifetime_days.unwrap_or(default);
    if args.lifetime_days.is_some_and(|d| d < 1) {
        return Err("--lifetime-days must be at least 1".into());
    }
    let written = match &args.command {
        CertCommand::CreateCa => certs::create_ca(dir, days(certs::CA_LIFETIME_DAYS))?,
        CertCommand::CreateNode { hosts } => {
            certs::create_node(dir, hosts, days(certs::CERT_LIFETIME_DAYS))?
        }
        CertCommand::CreateClient { user } => {
            certs::create_client(dir, user, days(certs::CERT_LIFETIME_DAYS))?
        }
        CertCommand::Ls => {
            let now = time::OffsetDateTime::now_utc();
            println!("{:<28} {:<32} {:>9}", "file", "subject", "days left");
            for c in certs::list(dir)? {
                let left = c.days_left(now);
                let file = c.file.file_name().unwrap_or_default().to_string_lossy();
                let flag = if left < certs::EXPIRY_WARNING_DAYS {
                    "  renew soon"
                } else {
                    ""
                };
                println!("{file:<28} {:<32} {left:>9}{flag}", c.subject);
            }
            return Ok(());
        }
    };
    for f in written {
        println!("wrote {}", f.display());
    }
    Ok(())
}
