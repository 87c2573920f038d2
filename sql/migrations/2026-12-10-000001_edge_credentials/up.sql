-- Each edge proves who it is: per-edge credentials, issued by `nearhop-control edge issue`.
-- Stored as SHA-256 of the credential, like account tokens: credentials are 160-bit random
-- strings, so a plain hash is as strong as a slow KDF and a lookup is one index probe.
-- No foreign key to edges: a credential is issued before its edge first registers.
CREATE TABLE edge_credentials (
  id                    BIGSERIAL PRIMARY KEY,
  edge_id               TEXT NOT NULL CHECK (edge_id ~ '^[a-z0-9][a-z0-9._-]{0,62}$'),
  -- when set, the edge may only register in this region
  region                TEXT,
  token_hash            BYTEA NOT NULL UNIQUE CHECK (length(token_hash) = 32),
  hint                  TEXT NOT NULL,
  created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
  revoked_at            TIMESTAMPTZ
);
CREATE INDEX edge_credentials_live_by_edge ON edge_credentials(edge_id) WHERE revoked_at IS NULL;

-- What an edge announces at registration: where peers reach its mesh listener, its SSH host
-- key (peers pin it), and the key control sends as bearer to its admin API. The admin key is
-- kept in clear because control must present it; it only opens that one edge's admin API.
ALTER TABLE edges
  ADD COLUMN mesh_addr  TEXT,
  ADD COLUMN host_key   TEXT,
  ADD COLUMN admin_key  TEXT;
