DROP TABLE IF EXISTS tunnels, banned_names, custom_domains, names, tokens, accounts, edges, regions;
DROP TABLE IF EXISTS dns_changes;
DROP FUNCTION IF EXISTS nearhop_log_record_change, nearhop_log_domain_change;
DROP TABLE IF EXISTS tsigkeys, cryptokeys, domainmetadata, comments, supermasters, records, domains;
