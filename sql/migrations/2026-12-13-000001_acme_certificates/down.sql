DROP TABLE IF EXISTS certificates;
DROP TABLE IF EXISTS certificates_generation;
DROP TABLE IF EXISTS acme_accounts;
