-- Certificates control obtains by ACME (DNS-01) and hands to the edges.

-- Control's ACME account per directory, created once: instant-acme's credentials document
-- (account URL and PKCS#8 key, base64). A secret: never logged, never exported.
CREATE TABLE acme_accounts (
  directory_url         TEXT PRIMARY KEY,
  credentials           TEXT NOT NULL,
  created_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The edges' certificates generation: one row, incremented in the same transaction as
-- every change to the set of certificates in service (an issuance stored, a certificate
-- removed), so a reader that reads it before the certificates never holds a newer
-- generation with an older set.
CREATE TABLE certificates_generation (
  one                   BOOL PRIMARY KEY DEFAULT true CHECK (one),
  generation            BIGINT NOT NULL
);
INSERT INTO certificates_generation (one, generation) VALUES (true, 0);

-- One row per certificate control keeps: a zone's (its apex and wildcard) or a verified
-- custom domain's. The chain and key are NULL until the first issuance; a failed renewal
-- keeps the old ones in service and records the error and the next attempt.
CREATE TABLE certificates (
  subject               TEXT PRIMARY KEY,
  kind                  TEXT NOT NULL CHECK (kind IN ('zone', 'custom_domain')),
  names                 TEXT[] NOT NULL,
  chain_pem             TEXT,
  key_pem               TEXT,
  serial                TEXT,
  not_after             TIMESTAMPTZ,
  issued_at             TIMESTAMPTZ,
  -- The generation this issuance was stored at.
  generation            BIGINT NOT NULL DEFAULT 0,
  failures              INT NOT NULL DEFAULT 0,
  last_error            TEXT,
  last_attempt_at       TIMESTAMPTZ,
  next_attempt_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
  force_renewal         BOOL NOT NULL DEFAULT false,
  -- Which control instance works on it, until when: one at a time across instances.
  claimed_by            TEXT,
  claimed_until         TIMESTAMPTZ,
  created_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX certificates_next_attempt ON certificates(next_attempt_at);
