//! `nearhop-control`: the control plane ("core") and its operator CLI.

mod acme;
mod admin;
mod api;
mod config;
mod db;
mod dns_txt;
mod edge_auth;
mod edge_client;
mod edge_credentials;
mod edges;
mod error;
mod holder_signing;
mod lag;
mod leases;
mod metrics;
mod peers;
mod schema;
mod state;
mod tunnels;
mod zones;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use nearhop_wire::Plan;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "nearhop-control",
    version,
    about = "nearhop's control plane and operator CLI"
)]
struct Cli {
    /// TOML configuration file (environment: NEARHOP_CONTROL_CONFIG).
    #[arg(long, global = true, env = "NEARHOP_CONTROL_CONFIG")]
    config: Option<PathBuf>,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending schema migrations and seed the zones from the configuration.
    Migrate,
    /// Run the HTTP API.
    Serve {
        /// Apply migrations before serving.
        #[arg(long)]
        migrate: bool,
    },
    /// Accounts.
    Account {
        #[command(subcommand)]
        action: AccountCmd,
    },
    /// Tokens.
    Token {
        #[command(subcommand)]
        action: TokenCmd,
    },
    /// Persistent names.
    Name {
        #[command(subcommand)]
        action: NameCmd,
    },
    /// Custom domains.
    Domain {
        #[command(subcommand)]
        action: DomainCmd,
    },
    /// Certificates obtained by ACME.
    Certificate {
        #[command(subcommand)]
        action: CertificateCmd,
    },
    /// Edges' own credentials.
    Edge {
        #[command(subcommand)]
        action: edge_credentials::EdgeCmd,
    },
    /// Take a name down: close its tunnel, remove its records, ban it
    /// (`takedown HOSTNAME --reason R`); `takedown lift HOSTNAME` lifts the ban.
    Takedown(TakedownArgs),
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct TakedownArgs {
    #[command(subcommand)]
    action: Option<TakedownCmd>,
    /// Full hostname, e.g. k3x9qz2m.free.tunnel.test.
    #[arg(required = true)]
    hostname: Option<String>,
    /// Why (1-500 characters, kept with the ban).
    #[arg(long, required = true)]
    reason: Option<String>,
}

#[derive(Subcommand)]
enum TakedownCmd {
    /// Lift a takedown: the name may be used again (its records come back with its next
    /// tunnel).
    Lift {
        /// Full hostname, e.g. k3x9qz2m.free.tunnel.test.
        hostname: String,
    },
}

#[derive(Subcommand)]
enum AccountCmd {
    /// Create an account and print its id and first token.
    Create {
        /// Plan: free or pro.
        #[arg(long, value_parser = parse_plan)]
        plan: Plan,
        /// Display name.
        #[arg(long, default_value = "account")]
        name: String,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token for an account.
    Create {
        #[arg(long)]
        account: i64,
    },
    /// Revoke a token by id.
    Revoke {
        #[arg(long)]
        token_id: i64,
    },
    /// List an account's tokens: id, hint, created, revoked, last used (never the token
    /// itself).
    List {
        #[arg(long)]
        account: i64,
    },
}

#[derive(Subcommand)]
enum NameCmd {
    /// Reserve a name in the pro zone for an account.
    Reserve {
        #[arg(long)]
        account: i64,
        name: String,
    },
    /// Free a name from the account that owns it (refused while a tunnel holds it); the
    /// custom domains pointing at it are removed with it.
    Release {
        /// The label (blog) or the whole name (blog.a.tunnel.test).
        name: String,
    },
}

#[derive(Subcommand)]
enum DomainCmd {
    /// Add a custom domain pointing at one of the account's names.
    Add {
        #[arg(long)]
        account: i64,
        domain: String,
        /// The account's tunnel label (or full name) the domain CNAMEs to.
        #[arg(long)]
        target: String,
        /// The operator vouches that ownership was proven.
        #[arg(long)]
        verified: bool,
    },
    /// Check the domain's TXT proof (`_nearhop.<domain>`) and mark it verified.
    Verify {
        domain: String,
        /// Resolver to ask (default: the first nameserver of /etc/resolv.conf).
        #[arg(long)]
        resolver: Option<std::net::SocketAddr>,
    },
}

#[derive(Subcommand)]
enum CertificateCmd {
    /// Every certificate's state: expiry, last error, next attempt, a custom domain's CNAME.
    List,
    /// Renew a certificate at the renewal task's next look, whatever its expiry.
    Renew {
        /// A zone (`a.tunnel.test`) or a verified custom domain.
        subject: String,
    },
}

fn parse_plan(s: &str) -> Result<Plan, String> {
    Plan::parse(s).ok_or_else(|| format!("unknown plan {s:?}: use free or pro"))
}

fn init_logging() {
    use tracing_subscriber::{fmt, EnvFilter};
    // actix logs every connection whose request it could not read at `error`: a client's
    // fault, which `api::unreadable_heads` logs at `info` with the answer it got.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,actix_http::h1::dispatcher=off"));
    if std::env::var("NEARHOP_LOG_FORMAT").as_deref() == Ok("json") {
        fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .json()
            .init();
    } else {
        fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
}

fn print<T: serde::Serialize>(json: bool, value: &T, human: impl FnOnce() -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        println!("{}", human());
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let json = cli.json;
    let result = run(cli);
    if let Err(e) = &result {
        // A script reading --json output gets the failure as JSON too (on stdout, where
        // the results go); the sentence still goes to stderr for whoever watches.
        if json {
            println!(
                "{}",
                serde_json::json!({ "error": { "message": format!("{e:#}") } })
            );
        }
    }
    result
}

fn run(cli: Cli) -> Result<()> {
    init_logging();
    let cfg = config::Config::load(cli.config.as_deref())?;
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Migrate => {
            let st = state::AppState::new(cfg)?;
            let mut conn = db::conn(&st.pool).context("connecting to the primary")?;
            let done = db::migrate(&mut conn)?;
            zones::seed(&mut conn, &st.cfg)?;
            print(cli.json, &done, || {
                format!("migrations applied: {}; zones seeded", done.len())
            })
        }
        Command::Serve { migrate } => rt.block_on(serve(cfg, migrate)),
        Command::Account { action } => {
            let st = state::AppState::new(cfg)?;
            let mut conn = db::conn(&st.pool)?;
            match action {
                AccountCmd::Create { plan, name } => {
                    let a = admin::create_account(&mut conn, &name, plan)?;
                    print(cli.json, &a, || {
                        format!(
                            "account {} ({}) created\ntoken {}: {}\n(the token is shown once; it is stored hashed; revoke it with token revoke --token-id {})",
                            a.account_id,
                            a.plan.as_str(),
                            a.token_id,
                            a.token,
                            a.token_id
                        )
                    })
                }
            }
        }
        Command::Token { action } => {
            let st = state::AppState::new(cfg)?;
            let mut conn = db::conn(&st.pool)?;
            match action {
                TokenCmd::Create { account } => {
                    let t = admin::create_token(&mut conn, account)?;
                    print(cli.json, &t, || {
                        format!("token {}: {}", t.token_id, t.token)
                    })
                }
                TokenCmd::Revoke { token_id } => {
                    let r = admin::revoke_token(&mut conn, token_id)?;
                    let shown = serde_json::json!({
                        "revoked": token_id,
                        "already_revoked": r.already_revoked,
                        "revoked_at": r.revoked_at,
                    });
                    print(cli.json, &shown, || {
                        if r.already_revoked {
                            format!(
                                "token {token_id} was already revoked at {}; nothing changed",
                                r.revoked_at
                            )
                        } else {
                            format!("token {token_id} revoked: it sets up no new tunnel")
                        }
                    })
                }
                TokenCmd::List { account } => {
                    let tokens = admin::list_tokens(&mut conn, account)?;
                    let shown = serde_json::json!({"account_id": account, "tokens": tokens});
                    print(cli.json, &shown, || token_lines(account, &tokens))
                }
            }
        }
        Command::Name { action } => {
            let st = state::AppState::new(cfg)?;
            let mut conn = db::conn(&st.pool)?;
            match action {
                NameCmd::Reserve { account, name } => {
                    let h = admin::reserve_name(&st, &mut conn, account, &name)?;
                    print(cli.json, &serde_json::json!({"hostname": h}), || {
                        format!("{h} reserved for account {account}")
                    })
                }
                NameCmd::Release { name } => {
                    let r = admin::release_name(&st, &mut conn, &name)?;
                    print(cli.json, &r, || admin::released_sentence(&r))
                }
            }
        }
        Command::Domain { action } => {
            let st = state::AppState::new(cfg)?;
            let mut conn = db::conn(&st.pool)?;
            match action {
                DomainCmd::Add {
                    account,
                    domain,
                    target,
                    verified,
                } => {
                    let d = admin::add_domain(&st, &mut conn, account, &domain, &target, verified)?;
                    let shown = serde_json::to_value(&d)?;
                    print(cli.json, &shown, || {
                        let mut s = format!(
                            "{} added: CNAME it to {}; prove ownership with TXT {} = {}{}",
                            d.domain,
                            d.cname_target,
                            d.txt_name,
                            d.txt_value,
                            if d.verified { " (marked verified)" } else { "" }
                        );
                        if let Some(cname) = &d.acme_challenge_cname {
                            s.push_str(&format!(
                                "\nfor its HTTPS certificate, also add: {} CNAME {}",
                                cname.name, cname.target
                            ));
                        }
                        s
                    })
                }
                DomainCmd::Verify { domain, resolver } => {
                    let resolver = match resolver {
                        Some(r) => r,
                        None => dns_txt::system_resolver()?,
                    };
                    admin::verify_domain(&mut conn, &domain, resolver)?;
                    print(cli.json, &serde_json::json!({"verified": domain}), || {
                        format!("{domain} verified: edges route it to its tunnel")
                    })
                }
            }
        }
        Command::Certificate { action } => {
            let st = state::AppState::new(cfg)?;
            let mut conn = db::conn(&st.pool)?;
            match action {
                CertificateCmd::List => {
                    let rows = acme::operator_statuses(&mut conn, &st.cfg)?;
                    print(cli.json, &rows, || certificate_lines(&rows))
                }
                CertificateCmd::Renew { subject } => {
                    acme::force_renewal(&mut conn, &subject)?;
                    print(
                        cli.json,
                        &serde_json::json!({"renewal_requested": subject}),
                        || {
                            format!("{subject}: renewal requested; control works on it at its next look")
                        },
                    )
                }
            }
        }
        Command::Edge { action } => edge_credentials::run(cfg, cli.json, action),
        Command::Takedown(args) => {
            let st = state::AppState::new(cfg)?;
            match (args.action, args.hostname, args.reason) {
                (Some(TakedownCmd::Lift { hostname }), _, _) => {
                    let mut conn = db::conn(&st.pool)?;
                    let l = admin::lift_takedown(&st, &mut conn, &hostname)?;
                    print(cli.json, &l, || {
                        format!(
                            "{}: takedown lifted (it was banned at {} for: {}); the name can \
                             be used again",
                            l.hostname, l.banned_at, l.reason
                        )
                    })
                }
                (None, Some(hostname), Some(reason)) => rt.block_on(async {
                    let done = admin::takedown(&st, &hostname, &reason).await?;
                    print(cli.json, &done, || admin::takedown_sentence(&done, &reason))
                }),
                // clap requires both without a subcommand.
                (None, _, _) => {
                    anyhow::bail!("give a HOSTNAME and --reason, or `takedown lift HOSTNAME`")
                }
            }
        }
    }
}

/// The human lines of `token list`.
fn token_lines(account: i64, tokens: &[nearhop_wire::TokenListed]) -> String {
    if tokens.is_empty() {
        return format!("account {account} has no tokens");
    }
    let mut out = vec![format!("tokens of account {account}:")];
    for t in tokens {
        let state = match t.revoked_at {
            Some(at) => format!("revoked {at}"),
            None => "live".to_string(),
        };
        let used = match t.last_used_at {
            Some(at) => format!("last used {at}"),
            None => "never used".to_string(),
        };
        out.push(format!(
            "  {} {}  created {}  {state}  {used}",
            t.token_id, t.hint, t.created_at
        ));
    }
    out.join("\n")
}

/// The human lines of `certificate list`.
fn certificate_lines(rows: &[acme::store::CertificateStatus]) -> String {
    if rows.is_empty() {
        return "no certificates (is acme_enabled on, and has control served once?)".into();
    }
    let mut out = Vec::new();
    for r in rows {
        let serial = r.serial.as_deref().unwrap_or("?");
        let failed = |e: &str| match r.failures {
            n if n > 1 => format!("failed {n} times in a row, last: {e}"),
            _ => format!("failed: {e}"),
        };
        let state = match (&r.not_after, &r.last_error) {
            (Some(t), None) => format!("valid until {t}, serial {serial}"),
            (Some(t), Some(e)) => {
                format!(
                    "valid until {t}, serial {serial}; last renewal {}",
                    failed(e)
                )
            }
            (None, Some(e)) => format!("not issued; {}", failed(e)),
            (None, None) => "not issued yet".into(),
        };
        out.push(format!(
            "{} ({}): {}; next attempt {}",
            r.subject,
            r.names.join(", "),
            state,
            r.next_attempt_at
        ));
        if let Some((name, target)) = &r.challenge_cname {
            out.push(format!(
                "  needs at the domain's DNS: {name} CNAME {target}"
            ));
        }
    }
    out.join("\n")
}

/// The API's listening socket, as actix-web's `HttpServer::bind` makes it: `SO_REUSEADDR`
/// (a restarted control binds at once) and a backlog of 1,024 (edges reconnecting together
/// after control comes back), where the standard library's bind leaves 128.
fn api_listener(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

async fn serve(cfg: config::Config, migrate: bool) -> Result<()> {
    let listen = cfg.listen;
    edge_auth::warn_if_legacy(&cfg);
    for (zone, ns) in cfg.in_zone_nameservers_without_address() {
        tracing::warn!(
            zone,
            nameserver = ns,
            "the zone's name server {ns} lies inside it and has no address: nothing in the zone \
             answers for it, and a resolver that follows the NS record gets NXDOMAIN; give it its \
             addresses under [nameserver_addresses] (docs/control.md)"
        );
    }
    let st = state::AppState::new(cfg)?;
    st.holder_signing.log_at_start(&st.cfg);
    tokio::spawn(st.holder_signing.clone().log_when_current_signs());
    {
        let st2 = st.clone();
        let seeded = tokio::task::spawn_blocking(move || -> Result<()> {
            let mut conn = db::conn(&st2.pool)?;
            if migrate {
                db::migrate(&mut conn)?;
            }
            zones::seed(&mut conn, &st2.cfg)
        })
        .await?;
        if let Err(e) = seeded {
            // Control still serves (503 for setups) so that edges and operators get a clear
            // answer while the database is away.
            tracing::error!(error = %e, "could not seed zones at start; is the primary up?");
        }
    }
    tokio::spawn(leases::run(st.clone()));
    tokio::spawn(acme::run(st.clone()));
    let data = actix_web::web::Data::new(st);
    tracing::info!(%listen, "control listening");
    // actix-web's `HttpServer` with one change: each connection passes through
    // `api::unreadable_heads`, so a request actix cannot read gets control's JSON error.
    use actix_service::ServiceFactoryExt as _;
    let listener = api_listener(listen).with_context(|| format!("binding {listen}"))?;
    let local = listener.local_addr()?;
    let builder = actix_server::Server::build();
    // Keep-alive connections close when the server stops, as under `HttpServer`: else a
    // pooled idle connection holds a stopping control for its whole shutdown timeout.
    let stopping = builder.graceful_shutdown_signal();
    builder
        .listen("control-api", listener, move || {
            let app = actix_web::App::new()
                .app_data(data.clone())
                .wrap(actix_web::middleware::from_fn(api::refuse_nul_in_target))
                .configure(api::configure);
            let app = actix_service::IntoServiceFactory::into_factory(app)
                .map_err(|e: actix_web::Error| e.error_response());
            let stopping = stopping.clone();
            let h1 = actix_http::HttpService::build()
                .graceful_shutdown_signal(move || {
                    let stopping = stopping.clone();
                    async move { stopping.notified().await }
                })
                .local_addr(local)
                // Longer than the edges' pool idle (see the constant): see docs/control.md.
                .keep_alive(nearhop_wire::API_SERVER_KEEP_ALIVE)
                // actix-web's own defaults, which `HttpServer` sets (half-closed
                // connections are allowed in actix-http's as well).
                .client_request_timeout(std::time::Duration::from_secs(5))
                .client_disconnect_timeout(std::time::Duration::from_secs(1))
                // The app's host and address (AppConfig's defaults here, not the listen
                // address as under `HttpServer`) are read by nothing in control.
                .h1(actix_service::map_config(app, |_| {
                    actix_web::dev::AppConfig::default()
                }));
            actix_service::fn_service(|io: actix_web::rt::net::TcpStream| {
                let peer = io.peer_addr().ok();
                std::future::ready(Ok::<_, actix_http::error::DispatchError>((
                    api::unreadable_heads::Explained::new(io, peer),
                    peer,
                )))
            })
            .and_then(h1)
        })
        .with_context(|| format!("listening on {listen}"))?
        .run()
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_list_shows_the_serial_and_the_failures_in_a_row() {
        let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().expect("time");
        let row = |serial: Option<&str>, failures, last_error: Option<&str>| {
            acme::store::CertificateStatus {
                subject: "a.tunnel.test".into(),
                kind: "zone".into(),
                names: vec!["*.a.tunnel.test".into()],
                in_service: serial.is_some(),
                serial: serial.map(str::to_string),
                not_after: serial.map(|_| at("2027-03-01T00:00:00Z")),
                issued_at: None,
                failures,
                last_error: last_error.map(str::to_string),
                next_attempt_at: at("2027-01-30T00:00:00Z"),
                challenge_cname: None,
            }
        };
        let lines = certificate_lines(&[
            row(Some("0a1b"), 0, None),
            row(Some("0a1b"), 3, Some("rate limited")),
            row(None, 1, Some("no answer")),
        ]);
        let lines: Vec<&str> = lines.lines().collect();
        assert!(
            lines[0].contains("valid until 2027-03-01 00:00:00 UTC, serial 0a1b;"),
            "{lines:?}"
        );
        assert!(
            lines[1]
                .contains("serial 0a1b; last renewal failed 3 times in a row, last: rate limited;"),
            "{lines:?}"
        );
        assert!(
            lines[2].contains("not issued; failed: no answer;"),
            "{lines:?}"
        );
    }
}
