-- nearhop's one schema. Part 1: PowerDNS 4.7 generic PostgreSQL schema
-- (modules/gpgsqlbackend/schema.pgsql.sql), kept compatible so that stock
-- `pdns_server --launch=gpgsql` can serve the very same database.

CREATE TABLE domains (
  id                    SERIAL PRIMARY KEY,
  name                  VARCHAR(255) NOT NULL,
  master                VARCHAR(128) DEFAULT NULL,
  last_check            INT DEFAULT NULL,
  type                  TEXT NOT NULL,
  notified_serial       BIGINT DEFAULT NULL,
  account               VARCHAR(40) DEFAULT NULL,
  options               TEXT DEFAULT NULL,
  catalog               TEXT DEFAULT NULL,
  CONSTRAINT c_lowercase_name CHECK (((name)::TEXT = LOWER((name)::TEXT)))
);
CREATE UNIQUE INDEX name_index ON domains(name);
CREATE INDEX catalog_idx ON domains(catalog);

CREATE TABLE records (
  id                    BIGSERIAL PRIMARY KEY,
  domain_id             INT DEFAULT NULL,
  name                  VARCHAR(255) DEFAULT NULL,
  type                  VARCHAR(10) DEFAULT NULL,
  content               VARCHAR(65535) DEFAULT NULL,
  ttl                   INT DEFAULT NULL,
  prio                  INT DEFAULT NULL,
  disabled              BOOL DEFAULT 'f',
  ordername             VARCHAR(255),
  auth                  BOOL DEFAULT 't',
  CONSTRAINT domain_exists
  FOREIGN KEY(domain_id) REFERENCES domains(id)
  ON DELETE CASCADE,
  CONSTRAINT c_lowercase_name CHECK (((name)::TEXT = LOWER((name)::TEXT)))
);
CREATE INDEX rec_name_index ON records(name);
CREATE INDEX nametype_index ON records(name,type);
CREATE INDEX domain_id ON records(domain_id);
CREATE INDEX recordorder ON records (domain_id, ordername text_pattern_ops);

CREATE TABLE supermasters (
  ip                    INET NOT NULL,
  nameserver            VARCHAR(255) NOT NULL,
  account               VARCHAR(40) NOT NULL,
  PRIMARY KEY(ip, nameserver)
);

CREATE TABLE comments (
  id                    SERIAL PRIMARY KEY,
  domain_id             INT NOT NULL,
  name                  VARCHAR(255) NOT NULL,
  type                  VARCHAR(10) NOT NULL,
  modified_at           INT NOT NULL,
  account               VARCHAR(40) DEFAULT NULL,
  comment               VARCHAR(65535) NOT NULL,
  CONSTRAINT domain_exists
  FOREIGN KEY(domain_id) REFERENCES domains(id)
  ON DELETE CASCADE,
  CONSTRAINT c_lowercase_name CHECK (((name)::TEXT = LOWER((name)::TEXT)))
);
CREATE INDEX comments_domain_id_idx ON comments (domain_id);
CREATE INDEX comments_name_type_idx ON comments (name, type);
CREATE INDEX comments_order_idx ON comments (domain_id, modified_at);

CREATE TABLE domainmetadata (
  id                    SERIAL PRIMARY KEY,
  domain_id             INT REFERENCES domains(id) ON DELETE CASCADE,
  kind                  VARCHAR(32),
  content               TEXT
);
CREATE INDEX domainidmetaindex ON domainmetadata(domain_id);

CREATE TABLE cryptokeys (
  id                    SERIAL PRIMARY KEY,
  domain_id             INT REFERENCES domains(id) ON DELETE CASCADE,
  flags                 INT NOT NULL,
  active                BOOL,
  published             BOOL DEFAULT TRUE,
  content               TEXT
);
CREATE INDEX domainidindex ON cryptokeys(domain_id);

CREATE TABLE tsigkeys (
  id                    SERIAL PRIMARY KEY,
  name                  VARCHAR(255),
  algorithm             VARCHAR(50),
  secret                VARCHAR(255),
  CONSTRAINT c_lowercase_name CHECK (((name)::TEXT = LOWER((name)::TEXT)))
);
CREATE UNIQUE INDEX namealgoindex ON tsigkeys(name, algorithm);

-- Part 2: the DNS change log. Every change to `records` or `domains` appends the names it
-- touched, stamped with the writing transaction's id. A reader (pdns-backend, on a replica)
-- tails it by transaction visibility, not by `id`: ids are drawn when a row is inserted but
-- become visible when the transaction commits, so a smaller id can appear after a larger one.
-- The reader keeps the xmin of its last snapshot and re-reads every change with
-- `xid >= that xmin`, skipping ids it already applied; every transaction not visible in a
-- snapshot has an xid at or above the snapshot's xmin, so nothing is missed. The reader then
-- reloads the changed names' current rows under the same snapshot, which makes applying a
-- change idempotent and independent of order.

CREATE TABLE dns_changes (
  id                    BIGSERIAL PRIMARY KEY,
  xid                   XID8 NOT NULL DEFAULT pg_current_xact_id(),
  domain_id             INT,
  -- lowercase, no trailing dot, as in `records.name`; NULL: the zone list itself changed
  name                  VARCHAR(255),
  changed_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX dns_changes_xid ON dns_changes(xid);
CREATE INDEX dns_changes_changed_at ON dns_changes(changed_at);

CREATE FUNCTION nearhop_log_record_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' OR TG_OP = 'UPDATE' THEN
    INSERT INTO dns_changes(domain_id, name) VALUES (NEW.domain_id, NEW.name);
  END IF;
  IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.name IS DISTINCT FROM NEW.name) THEN
    INSERT INTO dns_changes(domain_id, name) VALUES (OLD.domain_id, OLD.name);
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER records_change_log AFTER INSERT OR UPDATE OR DELETE ON records
  FOR EACH ROW EXECUTE FUNCTION nearhop_log_record_change();

CREATE FUNCTION nearhop_log_domain_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO dns_changes(domain_id, name) VALUES (COALESCE(NEW.id, OLD.id), NULL);
  RETURN NULL;
END $$;

CREATE TRIGGER domains_change_log AFTER INSERT OR UPDATE OR DELETE ON domains
  FOR EACH ROW EXECUTE FUNCTION nearhop_log_domain_change();

-- Part 3: control's tables.

CREATE TABLE regions (
  name                  TEXT PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9-]{0,30}$'),
  ipv4                  INET,
  ipv6                  INET,
  created_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE edges (
  id                    TEXT PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
  region                TEXT NOT NULL REFERENCES regions(name),
  admin_url             TEXT NOT NULL,
  registered_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
  last_heartbeat        TIMESTAMPTZ NOT NULL DEFAULT now(),
  draining              BOOL NOT NULL DEFAULT false
);
CREATE INDEX edges_region ON edges(region);

CREATE TABLE accounts (
  id                    BIGSERIAL PRIMARY KEY,
  name                  TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  plan                  TEXT NOT NULL CHECK (plan IN ('free', 'pro')),
  disabled              BOOL NOT NULL DEFAULT false,
  created_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Tokens are stored as SHA-256 of the token: tokens are 160-bit random strings, so a plain
-- hash is as strong as a slow KDF here and keeps lookups to one index probe.
CREATE TABLE tokens (
  id                    BIGSERIAL PRIMARY KEY,
  account_id            BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
  token_hash            BYTEA NOT NULL UNIQUE CHECK (length(token_hash) = 32),
  hint                  TEXT NOT NULL,
  created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
  revoked_at            TIMESTAMPTZ
);
CREATE INDEX tokens_account ON tokens(account_id);

-- Names owned by accounts in a zone. `is_default` marks the account's persistent name,
-- assigned on its first tunnel and reused for every later one.
CREATE TABLE names (
  zone                  TEXT NOT NULL,
  label                 TEXT NOT NULL CHECK (label ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
  account_id            BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
  is_default            BOOL NOT NULL DEFAULT false,
  created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (zone, label)
);
CREATE UNIQUE INDEX names_one_default ON names(account_id, zone) WHERE is_default;

CREATE TABLE custom_domains (
  domain                TEXT PRIMARY KEY,
  account_id            BIGINT NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
  zone                  TEXT NOT NULL,
  label                 TEXT NOT NULL,
  verify_token          TEXT NOT NULL,
  verified_at           TIMESTAMPTZ,
  created_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE banned_names (
  zone                  TEXT NOT NULL,
  label                 TEXT NOT NULL,
  reason                TEXT NOT NULL,
  banned_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (zone, label)
);

CREATE TABLE tunnels (
  id                    BIGSERIAL PRIMARY KEY,
  account_id            BIGINT REFERENCES accounts(id) ON DELETE SET NULL,
  zone                  TEXT NOT NULL,
  label                 TEXT NOT NULL,
  kind                  TEXT NOT NULL CHECK (kind IN ('http', 'tcp', 'tls')),
  region                TEXT NOT NULL REFERENCES regions(name),
  edge_id               TEXT NOT NULL REFERENCES edges(id),
  client_addr           TEXT NOT NULL,
  created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
  lease_expires_at      TIMESTAMPTZ NOT NULL,
  -- time limit of the plan (free tunnels), if any
  expires_at            TIMESTAMPTZ,
  closed_at             TIMESTAMPTZ,
  close_reason          TEXT,
  CHECK ((closed_at IS NULL) = (close_reason IS NULL))
);
-- At most one live tunnel per name: two edges racing for one name cannot both win.
CREATE UNIQUE INDEX tunnels_one_live_per_name ON tunnels(zone, label) WHERE closed_at IS NULL;
CREATE INDEX tunnels_live_by_edge ON tunnels(edge_id) WHERE closed_at IS NULL;
CREATE INDEX tunnels_live_lease ON tunnels(lease_expires_at) WHERE closed_at IS NULL;
CREATE INDEX tunnels_created_by_source ON tunnels(client_addr, created_at);
CREATE INDEX tunnels_account ON tunnels(account_id, created_at);
