#!/bin/sh
# Exercises the rendered PostgreSQL pieces of the example inventory on throwaway clusters:
# a primary and one replica (region eu) under a temp directory, on 127.0.0.1, ports 56801/56802.
#
#   ansible-playbook -i inventories/example render-configs.yml -e render_dir=/tmp/nearhop-rendered
#   sudo sh tools/pg-smoke.sh /tmp/nearhop-rendered [BIN_DIR]
#
# What it checks, with the files the roles would install (private addresses rewritten to
# 127.0.0.1 and port 5432 to the test ports; ssl=on with Debian's snakeoil certificate, as
# Debian's postgresql.conf has it):
#   1. the role SQL (postgres-roles.sql) runs on a fresh cluster, twice (idempotent);
#   2. pg_basebackup with the replication user, its password read from the rendered .pgpass
#      (scram-sha-256 through the rendered pg_hba.conf), -C -S replica_eu, sslmode=require;
#   3. the standby starts with the rendered conf.d file plus standby.signal and streams, with
#      application_name=eu on slot replica_eu;
#   4. as control's role (not a superuser): `nearhop-control migrate` with the rendered
#      control.toml, and control's replica queries see replay_lsn (needs pg_monitor);
#   5. nearhop-pdns-backend with the rendered pdns-backend.toml (sslmode=disable, quoted
#      password) loads the replica as the read-only role.
# Needs Debian's postgresql-15 and the postgres user. Leaves nothing running.
set -eu
R=${1:?render dir}
BIN=${2:-$(cd "$(dirname "$0")/../.." && pwd)/target/debug}
PG=/usr/lib/postgresql/15/bin
T=$(mktemp -d /tmp/nearhop-pgsmoke.XXXXXX)
chown postgres "$T"
P=56801
S=56802
H=56803
as_pg() { su postgres -s /bin/sh -c "$*"; }
cleanup() {
  [ -n "${BACKEND_PID:-}" ] && kill "$BACKEND_PID" 2>/dev/null || true
  as_pg "$PG/pg_ctl -D $T/replica -m fast stop" >/dev/null 2>&1 || true
  as_pg "$PG/pg_ctl -D $T/primary -m fast stop" >/dev/null 2>&1 || true
  rm -rf "$T"
}
trap cleanup EXIT
# localize FILE LISTEN_PORT [CONNINFO_PORT]: the file's own `port =` becomes LISTEN_PORT, the
# ports inside connection strings become CONNINFO_PORT (default: LISTEN_PORT).
localize() { c=${3:-$2}; sed -e 's/10\.[0-9]*\.0\.[0-9]*/127.0.0.1/g' -e "s/^port = 5432/port = $2/" -e "s/port=5432/port=$c/g" -e "s/:5432:/:$c:/" -e "s/:5432\//:$c\//" "$1"; }

echo "== primary"
as_pg "$PG/initdb -D $T/primary -U postgres --auth-local=peer --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 --no-instructions" >/dev/null
localize "$R/us-db-1/etc/postgresql/15/main/conf.d/nearhop.conf" $P > "$T/primary/nearhop.conf"
localize "$R/us-db-1/etc/postgresql/15/main/pg_hba.conf" $P > "$T/primary/pg_hba.conf"
# The replica connects from 127.0.0.1 too: admit the replication user from there.
grep -q '^host    replication' "$T/primary/pg_hba.conf"
cat >> "$T/primary/postgresql.conf" <<EOF
include 'nearhop.conf'
unix_socket_directories = '$T'
ssl = on
ssl_cert_file = '/etc/ssl/certs/ssl-cert-snakeoil.pem'
ssl_key_file = '/etc/ssl/private/ssl-cert-snakeoil.key'
EOF
chown postgres "$T/primary/nearhop.conf" "$T/primary/pg_hba.conf"
as_pg "$PG/pg_ctl -D $T/primary -l $T/primary.log -w start" >/dev/null
psql_p() { as_pg "psql -X -h $T -p $P $*"; }
cp "$R/us-db-1/etc/nearhop/postgres-roles.sql" "$T/roles.sql"; chown postgres "$T/roles.sql"
psql_p "-q -v ON_ERROR_STOP=1 -d postgres -f $T/roles.sql"
psql_p "-q -v ON_ERROR_STOP=1 -d postgres -f $T/roles.sql"
echo "ok   role SQL ran twice"
as_pg "createdb -h $T -p $P -O nearhop -E UTF8 --locale=C.UTF-8 -T template0 nearhop"

echo "== replica (eu)"
localize "$R/eu-db-1/var/lib/postgresql/.pgpass" $P > "$T/pgpass"
chown postgres "$T/pgpass"; chmod 600 "$T/pgpass"
as_pg "PGPASSFILE=$T/pgpass $PG/pg_basebackup --dbname='host=127.0.0.1 port=$P user=replicator sslmode=require application_name=eu' --pgdata=$T/replica --checkpoint=fast --wal-method=stream --create-slot --slot=replica_eu --no-password"
echo "ok   pg_basebackup with scram via .pgpass, sslmode=require, slot replica_eu"
localize "$R/eu-db-1/etc/postgresql/15/main/conf.d/nearhop.conf" $S $P > "$T/replica/nearhop.conf"
sed -i "s|sslmode=require|sslmode=require passfile=$T/pgpass|" "$T/replica/nearhop.conf"
localize "$R/eu-db-1/etc/postgresql/15/main/pg_hba.conf" $S > "$T/replica/pg_hba.conf"
cat >> "$T/replica/postgresql.conf" <<EOF
include 'nearhop.conf'
unix_socket_directories = '$T'
EOF
touch "$T/replica/standby.signal"
chown postgres "$T/replica/nearhop.conf" "$T/replica/pg_hba.conf" "$T/replica/standby.signal"
as_pg "$PG/pg_ctl -D $T/replica -l $T/replica.log -w start" >/dev/null
for i in $(seq 1 50); do
  st=$(as_pg "psql -X -h $T -p $S -d postgres -tAc \"SELECT status FROM pg_stat_wal_receiver\"" || true)
  [ "$st" = streaming ] && break; sleep 0.2
done
[ "$st" = streaming ] || { echo "FAIL replica not streaming"; cat "$T/replica.log"; exit 1; }
echo "ok   standby streams"

echo "== control's role"
localize "$R/us-control-1/etc/nearhop/control.toml" $P > "$T/control.toml"
sed -i 's/^listen = .*/listen = "127.0.0.1:56804"/' "$T/control.toml"
"$BIN/nearhop-control" --config "$T/control.toml" --json migrate
"$BIN/nearhop-control" --config "$T/control.toml" --json migrate
echo "ok   nearhop-control migrate (twice) as role nearhop"
PW=$(sed -n 's/^database_url = "postgres:\/\/nearhop:\([^@]*\)@.*/\1/p' "$T/control.toml")
row=$(PGPASSWORD=$PW psql -X -h 127.0.0.1 -p $P -U nearhop -d nearhop -tAc \
  "SELECT application_name, replay_lsn IS NOT NULL, s.slot_name FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid")
echo "     pg_stat_replication as nearhop: $row"
[ "$row" = "eu|t|replica_eu" ] || { echo "FAIL control's role cannot see the replica's replay_lsn"; exit 1; }
echo "ok   control's role sees application_name=eu, replay_lsn and slot replica_eu"
# Why the role SQL grants pg_monitor: without it the same query sees no replay_lsn.
psql_p "-q -d postgres -c 'REVOKE pg_monitor FROM nearhop'"
row=$(PGPASSWORD=$PW psql -X -h 127.0.0.1 -p $P -U nearhop -d nearhop -tAc \
  "SELECT application_name, replay_lsn IS NOT NULL FROM pg_stat_replication")
psql_p "-q -d postgres -c 'GRANT pg_monitor TO nearhop'"
echo "     without pg_monitor: $row"
[ "$row" != "eu|t" ] || { echo "FAIL expected replay_lsn to be hidden without pg_monitor"; exit 1; }
echo "ok   without pg_monitor control's role does not see replay_lsn (so the grant is needed)"

echo "== pdns-backend on the replica"
localize "$R/eu-db-1/etc/nearhop/pdns-backend.toml" $S | sed -e "s/^http_listen = .*/http_listen = \"127.0.0.1:$H\"/" \
  -e '/^unix_socket/d' -e '/^pdns_socket_dir/d' > "$T/backend.toml"
RUST_LOG=warn "$BIN/nearhop-pdns-backend" --config "$T/backend.toml" > "$T/backend.log" 2>&1 &
BACKEND_PID=$!
for i in $(seq 1 50); do
  st=$(curl -fsS "http://127.0.0.1:$H/v1/status" 2>/dev/null || true)
  case "$st" in *'"loaded":true'*) break;; esac; sleep 0.2
done
echo "     /v1/status: $st"
case "$st" in *'"loaded":true'*) echo "ok   backend loaded the replica as nearhop_dns";; *) echo "FAIL backend"; cat "$T/backend.log"; exit 1;; esac
echo "all PostgreSQL smoke checks passed"
