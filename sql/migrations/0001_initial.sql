-- Orgs, data sources, envelope-encryption data keys, service accounts and their tokens.

CREATE TABLE org (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    created timestamptz NOT NULL DEFAULT now(),
    updated timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT org_name_key UNIQUE (name)
);
INSERT INTO org (id, name) VALUES (1, 'Main Org.');
SELECT setval(pg_get_serial_sequence('org', 'id'), 1);

-- Data keys encrypt secureJsonData values (AES-256-GCM); each is itself encrypted with a key
-- derived from [security] secret_key and kek_salt, so rotating secret_key re-wraps only these rows.
CREATE TABLE data_key (
    id text PRIMARY KEY,
    active boolean NOT NULL,
    kek_salt bytea NOT NULL,
    encrypted_key bytea NOT NULL,
    created timestamptz NOT NULL DEFAULT now(),
    updated timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX data_key_one_active ON data_key (active) WHERE active;

CREATE TABLE data_source (
    id bigserial PRIMARY KEY,
    org_id bigint NOT NULL REFERENCES org (id) ON DELETE CASCADE,
    version integer NOT NULL DEFAULT 1,
    type text NOT NULL,
    name text NOT NULL,
    access text NOT NULL,
    url text NOT NULL DEFAULT '',
    "user" text NOT NULL DEFAULT '',
    database text NOT NULL DEFAULT '',
    basic_auth boolean NOT NULL DEFAULT false,
    basic_auth_user text NOT NULL DEFAULT '',
    with_credentials boolean NOT NULL DEFAULT false,
    is_default boolean NOT NULL DEFAULT false,
    json_data jsonb,
    -- {key: "<data key id>.<base64 nonce+ciphertext>"}; values are never stored in plaintext
    secure_json_data jsonb NOT NULL DEFAULT '{}',
    read_only boolean NOT NULL DEFAULT false,
    uid text NOT NULL,
    api_version text NOT NULL DEFAULT '',
    created timestamptz NOT NULL DEFAULT now(),
    updated timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT data_source_org_id_name_key UNIQUE (org_id, name),
    CONSTRAINT data_source_org_id_uid_key UNIQUE (org_id, uid)
);

CREATE TABLE service_account (
    id bigserial PRIMARY KEY,
    org_id bigint NOT NULL REFERENCES org (id) ON DELETE CASCADE,
    name text NOT NULL,
    login text NOT NULL,
    role text NOT NULL,
    is_disabled boolean NOT NULL DEFAULT false,
    created timestamptz NOT NULL DEFAULT now(),
    updated timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT service_account_org_id_login_key UNIQUE (org_id, login)
);
-- user id 1 is the configured admin, as in Grafana
SELECT setval(pg_get_serial_sequence('service_account', 'id'), 1);

-- fine-grained grants on top of the basic role (Grafana's custom role assignments)
CREATE TABLE service_account_permission (
    service_account_id bigint NOT NULL REFERENCES service_account (id) ON DELETE CASCADE,
    action text NOT NULL,
    scope text NOT NULL DEFAULT '',
    PRIMARY KEY (service_account_id, action, scope)
);

CREATE TABLE api_token (
    id bigserial PRIMARY KEY,
    org_id bigint NOT NULL REFERENCES org (id) ON DELETE CASCADE,
    service_account_id bigint NOT NULL REFERENCES service_account (id) ON DELETE CASCADE,
    name text NOT NULL,
    -- sha256 of the whole glsa_ token: tokens carry 190 bits of entropy, so a fast hash is enough
    hash text NOT NULL,
    created timestamptz NOT NULL DEFAULT now(),
    expires timestamptz,
    last_used_at timestamptz,
    is_revoked boolean NOT NULL DEFAULT false,
    CONSTRAINT api_token_hash_key UNIQUE (hash),
    CONSTRAINT api_token_service_account_id_name_key UNIQUE (service_account_id, name)
);
