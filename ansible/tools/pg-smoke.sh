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
#      password) loads the replica as the read-only role;
#   6. pdns_server with the rendered pdns.conf, both it and the backend running as user pdns
#      (as the units run them), answers from the backend over the unix socket, and a record
#      changed on the primary is answered within a second although pdns's caches are on:
#      the backend's purge through pdns.controlsocket works for that user.
# Needs Debian's postgresql-15, pdns-server + pdns-backend-remote, dig, and the postgres and
# pdns users. Leaves nothing running.
set -eu
R=${1:?render dir}
BIN=${2:-$(cd "$(dirname "$0")/../.." && pwd)/target/debug}
PG=/usr/lib/postgresql/15/bin
T=$(mktemp -d /tmp/nearhop-pgsmoke.XXXXXX)
chown postgres "$T"
chmod 755 "$T"
P=56801
S=56802
H=56803
as_pg() { su postgres -s /bin/sh -c "$*"; }
cleanup() {
  [ -n "${PDNS_PID:-}" ] && pkill -TERM -P "$PDNS_PID" 2>/dev/null; [ -n "${PDNS_PID:-}" ] && kill "$PDNS_PID" 2>/dev/null || true
  [ -n "${BACKEND_PID:-}" ] && pkill -TERM -P "$BACKEND_PID" 2>/dev/null; [ -n "${BACKEND_PID:-}" ] && kill "$BACKEND_PID" 2>/dev/null || true
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

echo "== pdns-backend and pdns_server on the replica, both as user pdns"
DNS=56853
mkdir -p "$T/nearhop-run" "$T/pdns-run" "$T/pdns-etc"
chown pdns:pdns "$T/nearhop-run" "$T/pdns-run"
localize "$R/eu-db-1/etc/nearhop/pdns-backend.toml" $S | sed -e "s/^http_listen = .*/http_listen = \"127.0.0.1:$H\"/" \
  -e "s|^unix_socket = .*|unix_socket = \"$T/nearhop-run/pdns-backend.sock\"|" \
  -e "s|^pdns_socket_dir = .*|pdns_socket_dir = \"$T/pdns-run\"|" > "$T/backend.toml"
sed -e "s|unix:path=[^,]*|unix:path=$T/nearhop-run/pdns-backend.sock|" -e "s|^local-address=.*|local-address=127.0.0.1|" \
  -e "s|^local-port=.*|local-port=$DNS|" -e "s|^socket-dir=.*|socket-dir=$T/pdns-run|" \
  "$R/eu-db-1/etc/powerdns/pdns.conf" > "$T/pdns-etc/pdns.conf"
chown pdns:pdns "$T/backend.toml"; chmod 640 "$T/backend.toml"; chmod 644 "$T/pdns-etc/pdns.conf"
su pdns -s /bin/sh -c "RUST_LOG=warn exec $BIN/nearhop-pdns-backend --config $T/backend.toml" > "$T/backend.log" 2>&1 &
BACKEND_PID=$!
for i in $(seq 1 50); do
  st=$(curl -fsS "http://127.0.0.1:$H/v1/status" 2>/dev/null || true)
  case "$st" in *'"loaded":true'*) break;; esac; sleep 0.2
done
echo "     /v1/status: $st"
case "$st" in *'"loaded":true'*) echo "ok   backend loaded the replica as nearhop_dns";; *) echo "FAIL backend"; cat "$T/backend.log"; exit 1;; esac
[ -S "$T/nearhop-run/pdns-backend.sock" ] || { echo "FAIL no backend socket"; exit 1; }
su pdns -s /bin/sh -c "exec pdns_server --config-dir=$T/pdns-etc" > "$T/pdns.log" 2>&1 &
PDNS_PID=$!
for i in $(seq 1 60); do
  a=$(dig +short +time=1 +tries=1 @127.0.0.1 -p $DNS eu.a.tunnel.test A 2>/dev/null | grep -E '^[0-9.]+$' || true)
  [ -n "$a" ] && break; sleep 0.5
done
echo "     eu.a.tunnel.test A -> $a"
[ "$a" = 203.0.113.110 ] || { echo "FAIL pdns did not answer the seeded region record"; cat "$T/pdns.log"; exit 1; }
echo "ok   pdns_server (rendered pdns.conf) answers from the backend over the unix socket"
ls -l "$T/pdns-run/pdns.controlsocket" | sed 's/^/     /'
# Cached now (cache-ttl 60 s, pdns_cache_ttl). Change it on the primary; it must be answered within ~1 s.
dig +short @127.0.0.1 -p $DNS eu.a.tunnel.test A >/dev/null
before=$(curl -fsS "http://127.0.0.1:$H/metrics" | grep '^nearhop_pdns_backend_pdns_purges_total' | tr '\n' ' ')
echo "     before the change: $before"
psql_p "-q -d nearhop -c \"UPDATE records SET content = '203.0.113.111' WHERE name = 'eu.a.tunnel.test' AND type = 'A'\""
changed_at=$(date +%s%N)
for i in $(seq 1 40); do
  a=$(dig +short +time=1 +tries=1 @127.0.0.1 -p $DNS eu.a.tunnel.test A 2>/dev/null || true)
  [ "$a" = 203.0.113.111 ] && break; sleep 0.05
done
ms=$(( ($(date +%s%N) - changed_at) / 1000000 ))
purges=$(curl -fsS "http://127.0.0.1:$H/metrics" | grep '^nearhop_pdns_backend_pdns_purges_total' || true)
echo "     after the change:  $(echo "$purges" | tr '\n' ' ')"
[ "$a" = 203.0.113.111 ] || { echo "FAIL the changed record was not served within 2 s (cache not purged?)"; exit 1; }
echo "ok   changed record served after ${ms} ms with caches on (purge through pdns.controlsocket as user pdns)"
echo "all smoke checks passed"
