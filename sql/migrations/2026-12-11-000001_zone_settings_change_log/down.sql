DROP TRIGGER IF EXISTS domainmetadata_change_log ON domainmetadata;
DROP TRIGGER IF EXISTS tsigkeys_change_log ON tsigkeys;
DROP FUNCTION IF EXISTS nearhop_log_zone_settings_change();
