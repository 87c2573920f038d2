-- The client's source prefix (`203.0.113.7/32`, `2001:db8:1:2::/64` by default): per-source
-- limits (creations per minute, live anonymous tunnels) count tunnels by it, so one host
-- cannot dodge a limit by rotating addresses inside its IPv6 /64.
ALTER TABLE tunnels ADD COLUMN source_prefix TEXT;
CREATE INDEX tunnels_live_by_source_prefix ON tunnels(zone, source_prefix)
  WHERE closed_at IS NULL;
CREATE INDEX tunnels_recent_by_source_prefix ON tunnels(zone, source_prefix, created_at);
