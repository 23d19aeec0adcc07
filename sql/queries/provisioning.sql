-- name: lock_provisioning
-- $1 the migration lock key. Serialises provisioning runs across replicas (re-entrant for the session
-- that holds the same key while migrating at start).
SELECT pg_advisory_xact_lock($1::bigint);

-- name: list_prunable_data_sources
-- (no parameters) -> org_id, name of every data source a file with `prune: true` wrote.
SELECT org_id, name FROM data_source WHERE is_prunable ORDER BY org_id, name;

-- name: insert_provisioned_data_source
-- $1 org id .. $16 api version, $17 is prunable -> the new row.
INSERT INTO data_source (org_id, type, name, access, url, "user", database, basic_auth, basic_auth_user,
                         with_credentials, is_default, json_data, secure_json_data, uid, read_only, api_version,
                         is_prunable)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
RETURNING *;

-- name: update_provisioned_data_source
-- $1 org id, $2 id, $3 file version (0: no check, stored becomes 1; else stored must be <= $3 and becomes
-- $3 + 1), $4 type .. $11 basicAuthUser, $12 withCredentials, $13 isDefault, $14 jsonData, $15 sealed secrets
-- (replacing the stored ones), $16 uid ('' keeps it), $17 read only, $18 is prunable -> the row, or nothing
-- when the stored version is newer than the file's.
UPDATE data_source SET
    version = CASE WHEN $3::int = 0 THEN 1 ELSE $3::int + 1 END,
    type = $4, name = $5, access = $6, url = $7, "user" = $8, database = $9, basic_auth = $10,
    basic_auth_user = $11, with_credentials = $12, is_default = $13, json_data = $14, secure_json_data = $15,
    uid = CASE WHEN $16::text = '' THEN uid ELSE $16::text END,
    read_only = $17, is_prunable = $18, updated = now()
WHERE org_id = $1 AND id = $2 AND ($3::int = 0 OR version <= $3::int)
RETURNING *;

-- name: get_provisioning_digest
-- $1 provisioner name -> digest of the files last applied at a start.
SELECT digest FROM provisioning_state WHERE provisioner = $1;

-- name: set_provisioning_digest
-- $1 provisioner name, $2 digest of the files just applied.
INSERT INTO provisioning_state (provisioner, digest) VALUES ($1, $2)
ON CONFLICT (provisioner) DO UPDATE SET digest = excluded.digest, applied = now();
