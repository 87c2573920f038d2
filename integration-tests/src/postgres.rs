//! A real PostgreSQL primary with streaming replicas (one per non-primary region), made with
//! `initdb` and `pg_basebackup`, each on its own loopback address and port.

use crate::process::{run, ChildGuard};
use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Database name and superuser of the stack.
pub const DB_NAME: &str = "nearhop";
/// The superuser the clusters are created with.
pub const DB_USER: &str = "nearhop";

/// Where one server of the cluster listens.
#[derive(Debug, Clone)]
pub struct PgEndpoint {
    /// Region this server belongs to.
    pub region: String,
    /// Loopback address.
    pub ip: Ipv4Addr,
    /// TCP port.
    pub port: u16,
}

impl PgEndpoint {
    /// libpq keyword/value connection string for the stack database.
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user={} dbname={} connect_timeout=5",
            self.ip, self.port, DB_USER, DB_NAME
        )
    }

    /// `postgres://` URL for the stack database (diesel wants this form).
    pub fn url(&self) -> String {
        format!(
            "postgres://{}@{}:{}/{}",
            DB_USER, self.ip, self.port, DB_NAME
        )
    }
}

/// One running server, with the data directory kept so it can be restarted.
pub struct PgServer {
    /// Where it listens.
    pub endpoint: PgEndpoint,
    data_dir: PathBuf,
    log: PathBuf,
    process: Option<ChildGuard>,
}

impl PgServer {
    /// When the process has exited by itself since the last look: a sentence saying so
    /// ([`ChildGuard::take_exit`]).
    pub fn take_exit(&mut self) -> Option<String> {
        self.process.as_mut()?.take_exit()
    }

    /// Whether the server process runs.
    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .map(|p| p.is_running())
            .unwrap_or(false)
    }

    /// Stops the server (fast shutdown).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop_within(Duration::from_secs(30));
        }
    }

    /// Starts a stopped server again and waits until it accepts connections.
    pub fn start(&mut self, user: &RunAs) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let mut cmd = Command::new(pg_bin("postgres")?);
        cmd.arg("-D").arg(&self.data_dir);
        user.apply(&mut cmd);
        // SIGINT is PostgreSQL's fast shutdown: abort transactions, stop cleanly.
        let guard = ChildGuard::spawn(
            &format!("postgres ({})", self.endpoint.region),
            cmd,
            &self.log,
            libc::SIGINT,
        )?;
        self.process = Some(guard);
        wait_ready(&self.endpoint, self.process.as_mut())
    }

    /// The server's PID, if running.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid())
    }

    /// The server's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }
}

/// The unprivileged user the servers run as when the harness runs as root
/// (PostgreSQL refuses to run as root).
#[derive(Debug, Clone, Copy)]
pub struct RunAs {
    uid: Option<(u32, u32)>,
}

impl RunAs {
    /// Decides: ourselves when not root, else the `postgres` system user.
    pub fn detect() -> Result<RunAs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(RunAs { uid: None });
        }
        let out = run({
            let mut c = Command::new("id");
            c.arg("-u").arg("postgres");
            c
        })
        .context("running as root needs the `postgres` system user (apt-get install postgresql)")?;
        let uid: u32 = out.trim().parse().context("parsing uid of postgres")?;
        let out = run({
            let mut c = Command::new("id");
            c.arg("-g").arg("postgres");
            c
        })?;
        let gid: u32 = out.trim().parse().context("parsing gid of postgres")?;
        Ok(RunAs {
            uid: Some((uid, gid)),
        })
    }

    /// Makes `cmd` run as this user.
    pub fn apply(&self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.uid {
            cmd.uid(uid).gid(gid);
        }
    }

    /// Gives this user a directory.
    pub fn own(&self, dir: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.uid {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", dir.display()))?;
        }
        Ok(())
    }
}

/// Settings of the cluster.
#[derive(Debug, Clone)]
pub struct PgClusterConfig {
    /// The primary's region and where it listens.
    pub primary: PgEndpoint,
    /// The replicas.
    pub replicas: Vec<PgEndpoint>,
    /// `fsync` on the servers (off makes tests faster; replication is unaffected).
    pub fsync: bool,
}

/// A primary and its streaming replicas.
pub struct PgCluster {
    /// The primary.
    pub primary: PgServer,
    /// The replicas, one per other region.
    pub replicas: Vec<PgServer>,
    run_as: RunAs,
}

impl PgCluster {
    /// Creates the primary with `initdb`, the stack database, and each replica with
    /// `pg_basebackup` (own replication slot named after the region, `application_name`
    /// = region so that `pg_stat_replication` tells them apart), and starts them all.
    pub fn start(dir: &Path, cfg: &PgClusterConfig) -> Result<PgCluster> {
        let run_as = RunAs::detect()?;
        std::fs::create_dir_all(dir)?;
        run_as.own(dir)?;
        let primary_dir = dir.join(format!("pg-{}", cfg.primary.region));
        let mut init = Command::new(pg_bin("initdb")?);
        init.arg("-D")
            .arg(&primary_dir)
            .args([
                "-U",
                DB_USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ])
            .arg("--no-instructions");
        run_as.apply(&mut init);
        run(init).context("initdb of the primary")?;
        // One socket directory per server: the servers share a port number on different
        // addresses, and the unix socket's name carries only the port.
        let sock_dir = |region: &str| -> Result<PathBuf> {
            let d = dir.join(format!("sockets-{region}"));
            std::fs::create_dir_all(&d)?;
            run_as.own(&d)?;
            Ok(d)
        };
        write_server_conf(
            &primary_dir,
            &cfg.primary,
            &sock_dir(&cfg.primary.region)?,
            cfg.fsync,
            None,
        )?;
        std::fs::write(
            primary_dir.join("pg_hba.conf"),
            "local all all trust\n\
             host all all 127.0.0.0/8 trust\n\
             local replication all trust\n\
             host replication all 127.0.0.0/8 trust\n",
        )?;
        let mut primary = PgServer {
            endpoint: cfg.primary.clone(),
            log: dir.join(format!("pg-{}.log", cfg.primary.region)),
            data_dir: primary_dir,
            process: None,
        };
        primary.start(&run_as)?;
        let mut create = Command::new("psql");
        create
            .arg(primary_conninfo_db(&cfg.primary, "postgres"))
            .args(["-v", "ON_ERROR_STOP=1", "-qc"])
            .arg(format!("CREATE DATABASE {DB_NAME}"));
        run(create).context("creating the stack database")?;

        let mut replicas = Vec::new();
        for r in &cfg.replicas {
            let rdir = dir.join(format!("pg-{}", r.region));
            let mut bb = Command::new(pg_bin("pg_basebackup")?);
            bb.args(["-h", &cfg.primary.ip.to_string()])
                .args(["-p", &cfg.primary.port.to_string()])
                .args(["-U", DB_USER, "-c", "fast", "-X", "stream", "-C", "-S"])
                .arg(nearhop_wire::replica_slot_name(&r.region))
                .arg("-D")
                .arg(&rdir);
            run_as.apply(&mut bb);
            run(bb).with_context(|| format!("pg_basebackup for replica {}", r.region))?;
            write_server_conf(
                &rdir,
                r,
                &sock_dir(&r.region)?,
                cfg.fsync,
                Some(&cfg.primary),
            )?;
            std::fs::write(rdir.join("standby.signal"), "")?;
            run_as.own(&rdir.join("standby.signal"))?;
            let mut server = PgServer {
                endpoint: r.clone(),
                log: dir.join(format!("pg-{}.log", r.region)),
                data_dir: rdir,
                process: None,
            };
            server.start(&run_as)?;
            replicas.push(server);
        }
        Ok(PgCluster {
            primary,
            replicas,
            run_as,
        })
    }

    /// The replica of `region`.
    pub fn replica_mut(&mut self, region: &str) -> Option<&mut PgServer> {
        self.replicas
            .iter_mut()
            .find(|r| r.endpoint.region == region)
    }

    /// The server (primary or replica) that serves `region`.
    pub fn endpoint_of(&self, region: &str) -> Option<&PgEndpoint> {
        if self.primary.endpoint.region == region {
            return Some(&self.primary.endpoint);
        }
        self.replicas
            .iter()
            .find(|r| r.endpoint.region == region)
            .map(|r| &r.endpoint)
    }

    /// Who the servers run as.
    pub fn run_as(&self) -> RunAs {
        self.run_as
    }

    /// Starts a stopped server again (primary or replica of `region`).
    pub fn restart(&mut self, region: &str) -> Result<()> {
        let run_as = self.run_as;
        if self.primary.endpoint.region == region {
            return self.primary.start(&run_as);
        }
        match self.replica_mut(region) {
            Some(r) => r.start(&run_as),
            None => bail!("no server in region {region}"),
        }
    }

    /// Stops the server of `region`.
    pub fn stop(&mut self, region: &str) {
        if self.primary.endpoint.region == region {
            self.primary.stop();
        } else if let Some(r) = self.replica_mut(region) {
            r.stop();
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        for r in &mut self.replicas {
            r.stop();
        }
        self.primary.stop();
    }
}

fn primary_conninfo_db(p: &PgEndpoint, db: &str) -> String {
    format!(
        "host={} port={} user={} dbname={}",
        p.ip, p.port, DB_USER, db
    )
}

fn write_server_conf(
    data_dir: &Path,
    me: &PgEndpoint,
    sock_dir: &Path,
    fsync: bool,
    primary: Option<&PgEndpoint>,
) -> Result<()> {
    let mut conf = format!(
        "# written by nearhop's stack harness\n\
         listen_addresses = '{ip}'\n\
         port = {port}\n\
         unix_socket_directories = '{sock}'\n\
         max_connections = 200\n\
         shared_buffers = 64MB\n\
         wal_level = replica\n\
         max_wal_senders = 10\n\
         max_replication_slots = 10\n\
         wal_compression = on\n\
         hot_standby = on\n\
         hot_standby_feedback = on\n\
         wal_receiver_status_interval = 1s\n\
         fsync = {fsync}\n\
         synchronous_commit = on\n\
         log_min_messages = warning\n\
         log_line_prefix = '%m [%p] {region} '\n",
        ip = me.ip,
        port = me.port,
        sock = sock_dir.display(),
        fsync = if fsync { "on" } else { "off" },
        region = me.region,
    );
    if let Some(p) = primary {
        conf.push_str(&format!(
            "primary_conninfo = 'host={} port={} user={} application_name={}'\n\
             primary_slot_name = '{}'\n",
            p.ip,
            p.port,
            DB_USER,
            me.region,
            nearhop_wire::replica_slot_name(&me.region)
        ));
    }
    // postgresql.auto.conf is read last, so these win over initdb's and pg_basebackup's.
    std::fs::write(data_dir.join("postgresql.auto.conf"), conf)
        .with_context(|| format!("writing config in {}", data_dir.display()))?;
    Ok(())
}

fn wait_ready(ep: &PgEndpoint, mut process: Option<&mut ChildGuard>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = Command::new(pg_bin("pg_isready")?)
            .args(["-h", &ep.ip.to_string(), "-p", &ep.port.to_string(), "-q"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Ok(());
        }
        if let Some(p) = process.as_deref_mut() {
            p.check_running()?;
        }
        if Instant::now() > deadline {
            bail!("postgres for {} did not become ready in 60 s", ep.region);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Path of a PostgreSQL server program: `$NEARHOP_PG_BINDIR`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian), else the name on `PATH`.
pub fn pg_bin(name: &str) -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("NEARHOP_PG_BINDIR") {
        return Ok(PathBuf::from(dir).join(name));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let v: u32 = e.file_name().to_str()?.parse().ok()?;
                    Some((v, e.path().join("bin")))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return Ok(dir.join(name));
    }
    Ok(PathBuf::from(name))
}
/// Runs SQL on a server with `psql` (ON_ERROR_STOP), returning unaligned tuples-only output.
pub fn psql(db: &PgEndpoint, sql: &str) -> Result<String> {
    let mut c = Command::new("psql");
    c.arg(db.conninfo())
        .args(["-v", "ON_ERROR_STOP=1", "-qAtX", "-c"])
        .arg(sql);
    run(c)
}

/// Waits until `replica` has replayed everything the primary had written when called.
pub fn wait_replayed(primary: &PgEndpoint, replica: &PgEndpoint) -> Result<()> {
    let target = psql(primary, "SELECT pg_current_wal_lsn()")?;
    let target = target.trim();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = psql(
            replica,
            &format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"),
        )?;
        if ok.trim() == "t" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("replica {} did not replay {target}", replica.region);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
