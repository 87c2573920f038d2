//! Diesel table definitions for the tables control reads and writes (see `sql/migrations`).
//! `dns_changes` is left out: control only prunes it, with plain SQL.

diesel::table! {
    domains (id) {
        id -> Int4,
        name -> Varchar,
        master -> Nullable<Varchar>,
        last_check -> Nullable<Int4>,
        #[sql_name = "type"]
        kind -> Text,
        notified_serial -> Nullable<Int8>,
        account -> Nullable<Varchar>,
        options -> Nullable<Text>,
        catalog -> Nullable<Text>,
    }
}

diesel::table! {
    records (id) {
        id -> Int8,
        domain_id -> Nullable<Int4>,
        name -> Nullable<Varchar>,
        #[sql_name = "type"]
        rtype -> Nullable<Varchar>,
        content -> Nullable<Varchar>,
        ttl -> Nullable<Int4>,
        prio -> Nullable<Int4>,
        disabled -> Nullable<Bool>,
        ordername -> Nullable<Varchar>,
        auth -> Nullable<Bool>,
    }
}

diesel::table! {
    regions (name) {
        name -> Text,
        ipv4 -> Nullable<Inet>,
        ipv6 -> Nullable<Inet>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    edges (id) {
        id -> Text,
        region -> Text,
        admin_url -> Text,
        registered_at -> Timestamptz,
        last_heartbeat -> Timestamptz,
        draining -> Bool,
        mesh_addr -> Nullable<Text>,
        host_key -> Nullable<Text>,
        admin_key -> Nullable<Text>,
    }
}

diesel::table! {
    edge_credentials (id) {
        id -> Int8,
        edge_id -> Text,
        region -> Nullable<Text>,
        token_hash -> Bytea,
        hint -> Text,
        created_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    accounts (id) {
        id -> Int8,
        name -> Text,
        plan -> Text,
        disabled -> Bool,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    tokens (id) {
        id -> Int8,
        account_id -> Int8,
        token_hash -> Bytea,
        hint -> Text,
        created_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
        last_used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    names (zone, label) {
        zone -> Text,
        label -> Text,
        account_id -> Int8,
        is_default -> Bool,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    custom_domains (domain) {
        domain -> Text,
        account_id -> Int8,
        zone -> Text,
        label -> Text,
        verify_token -> Text,
        verified_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    banned_names (zone, label) {
        zone -> Text,
        label -> Text,
        reason -> Text,
        banned_at -> Timestamptz,
    }
}

diesel::table! {
    tunnels (id) {
        id -> Int8,
        account_id -> Nullable<Int8>,
        zone -> Text,
        label -> Text,
        kind -> Text,
        region -> Text,
        edge_id -> Text,
        client_addr -> Text,
        created_at -> Timestamptz,
        lease_expires_at -> Timestamptz,
        expires_at -> Nullable<Timestamptz>,
        closed_at -> Nullable<Timestamptz>,
        close_reason -> Nullable<Text>,
        source_prefix -> Nullable<Text>,
    }
}

diesel::table! {
    acme_accounts (directory_url) {
        directory_url -> Text,
        credentials -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    certificates_generation (one) {
        one -> Bool,
        generation -> Int8,
    }
}

diesel::table! {
    certificates (subject) {
        subject -> Text,
        kind -> Text,
        names -> Array<Text>,
        chain_pem -> Nullable<Text>,
        key_pem -> Nullable<Text>,
        serial -> Nullable<Text>,
        not_after -> Nullable<Timestamptz>,
        issued_at -> Nullable<Timestamptz>,
        generation -> Int8,
        failures -> Int4,
        last_error -> Nullable<Text>,
        last_attempt_at -> Nullable<Timestamptz>,
        next_attempt_at -> Timestamptz,
        force_renewal -> Bool,
        claimed_by -> Nullable<Text>,
        claimed_until -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(records -> domains (domain_id));
diesel::joinable!(tokens -> accounts (account_id));
diesel::joinable!(names -> accounts (account_id));
diesel::joinable!(tunnels -> edges (edge_id));
diesel::joinable!(edges -> regions (region));

diesel::allow_tables_to_appear_in_same_query!(
    domains,
    records,
    regions,
    edges,
    edge_credentials,
    accounts,
    tokens,
    names,
    custom_domains,
    banned_names,
    tunnels,
    acme_accounts,
    certificates,
    certificates_generation,
);
