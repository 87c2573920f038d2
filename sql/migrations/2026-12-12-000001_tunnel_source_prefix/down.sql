DROP INDEX IF EXISTS tunnels_recent_by_source_prefix;
DROP INDEX IF EXISTS tunnels_live_by_source_prefix;
ALTER TABLE tunnels DROP COLUMN source_prefix;
