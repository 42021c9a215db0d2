//! The `gantry` command.

mod config_cmd;
mod hybrid;
mod manage;
mod node;
mod quickstart;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// mimalloc: the request path allocates and frees small objects at a high rate, where it is
/// faster than glibc's malloc, and it returns freed pages to the system (lower steady RSS).
/// Built without transparent huge pages (`no_thp`): mimalloc would otherwise ask for them on
/// its arenas, and a 2 MiB page is resident whole, which put 11 MiB on an idle data plane's
/// RSS (25 MiB against 14 MiB, measured with `MEM_SERVICES=1 bash bench/propagation/run.sh`).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gantry",
    version,
    about = "An API gateway with a hybrid control plane / data plane, Kong compatible"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options every node command takes.
#[derive(clap::Args, Clone, Default)]
pub struct NodeOpts {
    /// A kong.conf-style configuration file.
    #[arg(short = 'c', long = "conf")]
    pub conf: Option<PathBuf>,
    /// The prefix directory (database, logs, node id); overrides the `prefix` setting.
    #[arg(short = 'p', long = "prefix")]
    pub prefix: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a node of the configured role in the foreground.
    Start(NodeOpts),
    /// Bring up a control plane, a data plane, cluster certificates, an echo upstream and an
    /// example /mock route; print what runs where.
    Quickstart {
        /// Where the quickstart keeps its files.
        #[arg(short = 'p', long = "prefix")]
        prefix: Option<PathBuf>,
        /// The control plane's Admin API port.
        #[arg(long, default_value_t = 8001)]
        admin_port: u16,
        /// The data plane's proxy port.
        #[arg(long, default_value_t = 8000)]
        proxy_port: u16,
        /// The control plane's cluster port.
        #[arg(long, default_value_t = 8005)]
        cluster_port: u16,
        /// The data plane's status port.
        #[arg(long, default_value_t = 8007)]
        status_port: u16,
        /// The control plane's telemetry port.
        #[arg(long, default_value_t = 8006)]
        telemetry_port: u16,
        /// The control plane's console port.
        #[arg(long, default_value_t = 8002)]
        console_port: u16,
        /// The gantry version the data plane runs (and the printed commands use): one that
        /// install.sh put in the versions directory; this binary's own by default.
        #[arg(long = "version", value_name = "VERSION")]
        dp_version: Option<String>,
    },
    /// Declarative configuration files and the store.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Hybrid mode tools.
    Hybrid {
        #[command(subcommand)]
        cmd: HybridCmd,
    },
    /// Access tokens for the v2 API and the Admin API (run on the control plane's host).
    Tokens {
        #[command(subcommand)]
        cmd: TokensCmd,
    },
    /// Control planes in this Gantry's store.
    #[command(name = "control-planes")]
    ControlPlanes {
        #[command(subcommand)]
        cmd: CpCmd,
    },
    /// Check that the node under the prefix runs and answers.
    Health(NodeOpts),
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum HybridCmd {
    /// Write a self-signed P-384 cluster certificate and key (default cluster.crt, cluster.key).
    #[command(name = "gen_cert", alias = "gen-cert")]
    GenCert {
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
}

#[derive(Subcommand)]
enum TokensCmd {
    /// Make a token and print it, once, on its own line.
    Create {
        #[arg(long)]
        name: String,
        /// viewer or admin.
        #[arg(long, default_value = "admin")]
        role: String,
        /// A control plane (id or name) the role applies to; repeat for several; none: all.
        #[arg(long = "control-plane")]
        control_planes: Vec<String>,
        /// personal (kpat_) or system (spat_).
        #[arg(long, default_value = "personal")]
        kind: String,
        /// 90d, 12h, 30m, 3600s or never.
        #[arg(long = "expires-in", default_value = "90d")]
        expires_in: String,
        #[command(flatten)]
        opts: NodeOpts,
    },
    /// List tokens (never their secrets).
    List(NodeOpts),
    /// Revoke a token by id.
    Revoke {
        id: String,
        #[command(flatten)]
        opts: NodeOpts,
    },
}

#[derive(Subcommand)]
enum CpCmd {
    /// Create a control plane; prints its id.
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        opts: NodeOpts,
    },
    /// List control planes.
    List(NodeOpts),
    /// Delete a control plane (id or name) and its configuration.
    Delete {
        which: String,
        #[command(flatten)]
        opts: NodeOpts,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Check a declarative file and list every error.
    #[command(name = "parse")]
    Parse {
        file: PathBuf,
        #[command(flatten)]
        opts: NodeOpts,
    },
    /// Add a declarative file's entities to the store (all or nothing).
    #[command(name = "db_import", alias = "db-import")]
    DbImport {
        file: PathBuf,
        /// The control plane (id or name) to import into; the default one when absent.
        #[arg(long = "control-plane")]
        control_plane: Option<String>,
        #[command(flatten)]
        opts: NodeOpts,
    },
    /// Write the store's configuration as a declarative file (stdout when no file is given).
    #[command(name = "db_export", alias = "db-export")]
    DbExport {
        file: Option<PathBuf>,
        /// The control plane (id or name) to export; the default one when absent.
        #[arg(long = "control-plane")]
        control_plane: Option<String>,
        #[command(flatten)]
        opts: NodeOpts,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Start(opts) => node::start(&opts),
        Cmd::Quickstart {
            prefix,
            admin_port,
            proxy_port,
            cluster_port,
            status_port,
            telemetry_port,
            console_port,
            dp_version,
        } => quickstart::run(
            prefix,
            quickstart::Ports {
                admin: admin_port,
                proxy: proxy_port,
                cluster: cluster_port,
                status: status_port,
                telemetry: telemetry_port,
                console: console_port,
            },
            dp_version,
        ),
        Cmd::Config { cmd } => match cmd {
            ConfigCmd::Parse { file, opts } => config_cmd::parse(&file, &opts),
            ConfigCmd::DbImport {
                file,
                control_plane,
                opts,
            } => config_cmd::db_import(&file, control_plane.as_deref(), &opts),
            ConfigCmd::DbExport {
                file,
                control_plane,
                opts,
            } => config_cmd::db_export(file.as_deref(), control_plane.as_deref(), &opts),
        },
        Cmd::Hybrid {
            cmd: HybridCmd::GenCert { cert, key, days },
        } => hybrid::gen_cert(cert, key, days),
        Cmd::Tokens { cmd } => match cmd {
            TokensCmd::Create {
                name,
                role,
                control_planes,
                kind,
                expires_in,
                opts,
            } => manage::tokens_create(&opts, &name, &role, &control_planes, &kind, &expires_in),
            TokensCmd::List(opts) => manage::tokens_list(&opts),
            TokensCmd::Revoke { id, opts } => manage::tokens_revoke(&opts, &id),
        },
        Cmd::ControlPlanes { cmd } => match cmd {
            CpCmd::Create {
                name,
                description,
                opts,
            } => manage::cp_create(&opts, &name, &description),
            CpCmd::List(opts) => manage::cp_list(&opts),
            CpCmd::Delete { which, opts } => manage::cp_delete(&opts, &which),
        },
        Cmd::Health(opts) => node::health(&opts),
        Cmd::Version => {
            println!(
                "gantry {} (Kong Admin API {})",
                gantry_model::GANTRY_VERSION,
                gantry_model::KONG_VERSION
            );
            Ok(())
        }
    };
    // Access log lines still waiting for their writer.
    gantry_proxy::logfile::flush_all();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
