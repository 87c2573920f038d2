-- Zone-level settings that are not records join the DNS change log: a change to
-- `tsigkeys` or `domainmetadata` appends one `dns_changes` row with a NULL name, the
-- marker that already means "the zone list changed". pdns-backend then re-reads the zone
-- list, the metadata and the TSIG keys under a snapshot, exactly as it does for zones, so a
-- key or a TSIG-ALLOW-AXFR entry changed on the primary is in effect in every region
-- within the same bound as a record. One row per statement: the reader reloads these small
-- tables whole, it needs to know only that something changed.

CREATE FUNCTION nearhop_log_zone_settings_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO dns_changes(domain_id, name) VALUES (NULL, NULL);
  RETURN NULL;
END $$;

CREATE TRIGGER tsigkeys_change_log AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON tsigkeys
  FOR EACH STATEMENT EXECUTE FUNCTION nearhop_log_zone_settings_change();

CREATE TRIGGER domainmetadata_change_log AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON domainmetadata
  FOR EACH STATEMENT EXECUTE FUNCTION nearhop_log_zone_settings_change();
