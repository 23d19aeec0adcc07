-- name: lock_org_data_sources
-- $1 org id. Serialises writes to one org's data sources (default flag, auto-naming) until commit.
SELECT pg_advisory_xact_lock(7201, $1::int);

-- name: list_data_sources
-- $1 org id, $2 row limit (NULL: all). Which rows a limited list returns, as Grafana: by name.
SELECT *
FROM data_source WHERE org_id = $1 ORDER BY name LIMIT $2;

-- name: search_data_sources
-- $1 org id, $2 types (NULL: any), $3 name substring, case-insensitive (NULL: any), $4 limit, $5 offset.
SELECT *, count(*) OVER () AS total
FROM data_source
WHERE org_id = $1
  AND ($2::text[] IS NULL OR type = any($2::text[]))
  AND ($3::text IS NULL OR strpos(lower(name), lower($3::text)) > 0)
ORDER BY lower(name) COLLATE "C", id
LIMIT $4 OFFSET $5;

-- name: list_data_source_names
-- $1 org id -> every name in the org (auto-naming, first-in-org default).
SELECT name FROM data_source WHERE org_id = $1;

-- name: get_data_source
-- $1 org id, then exactly one of $2 id, $3 uid, $4 name (the others NULL) -> the row or nothing.
SELECT *
FROM data_source
WHERE org_id = $1 AND ($2::bigint IS NULL OR id = $2) AND ($3::text IS NULL OR uid = $3)
  AND ($4::text IS NULL OR name = $4);

-- name: lock_data_source
-- Same parameters as get_data_source; locks the row for the rest of the transaction.
SELECT *
FROM data_source
WHERE org_id = $1 AND ($2::bigint IS NULL OR id = $2) AND ($3::text IS NULL OR uid = $3)
  AND ($4::text IS NULL OR name = $4)
FOR UPDATE;

-- name: get_data_sources_by_uid
-- $1 org id, $2 uids -> the rows among them that exist.
SELECT *
FROM data_source WHERE org_id = $1 AND uid = any($2::text[]);

-- name: data_source_uid_taken
-- $1 org id, $2 uid -> a row when the uid is in use.
SELECT 1 FROM data_source WHERE org_id = $1 AND uid = $2;

-- name: insert_data_source
-- $1 org id .. $16 api version -> the new row.
INSERT INTO data_source (org_id, type, name, access, url, "user", database, basic_auth, basic_auth_user,
                         with_credentials, is_default, json_data, secure_json_data, uid, read_only, api_version)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
RETURNING *;

-- name: clear_default_data_source
-- $1 org id, $2 id of the data source that keeps the flag.
UPDATE data_source SET is_default = false WHERE org_id = $1 AND id <> $2 AND is_default;

-- name: update_data_source
-- $1 org id, $2 id, $3 version sent (0: no check, stored becomes 1; else stored must be <= $3 and
-- becomes $3 + 1), $4 type .. $15 api version, $16 secret keys to drop, $17 sealed secrets to set.
-- Empty url, basicAuthUser and uid keep the stored value, as Grafana's update does.
UPDATE data_source SET
    version = CASE WHEN $3::int = 0 THEN 1 ELSE $3::int + 1 END,
    type = $4, name = $5, access = $6,
    url = CASE WHEN $7::text = '' THEN url ELSE $7::text END,
    "user" = $8, database = $9, basic_auth = $10,
    basic_auth_user = CASE WHEN $11::text = '' THEN basic_auth_user ELSE $11::text END,
    with_credentials = $12, is_default = $13, json_data = $14, api_version = $15,
    secure_json_data = (secure_json_data - $16::text[]) || $17::jsonb,
    read_only = false, updated = now()
WHERE org_id = $1 AND id = $2 AND ($3::int = 0 OR version <= $3::int)
RETURNING *;

-- name: data_source_name_taken
-- $1 org id, $2 name, $3 id to ignore -> a row when another data source has the name.
SELECT 1 FROM data_source WHERE org_id = $1 AND name = $2 AND id <> $3;

-- name: delete_data_source
-- $1 org id, $2 id -> the id when a row was deleted.
DELETE FROM data_source WHERE org_id = $1 AND id = $2 RETURNING id;

-- name: notify_data_source_changed
-- $1 "org_id:id:uid". Sent on commit to every replica's cache (gateway/cache.py CHANNEL).
SELECT pg_notify('gateway_datasource', $1);

-- name: get_default_data_source
-- $1 org id -> the org's default data source, if it has one.
SELECT * FROM data_source WHERE org_id = $1 AND is_default ORDER BY id LIMIT 1;

-- name: count_data_sources_by_type
-- no parameters -> (type, count) for every type with data sources, all orgs (grafana_stat_totals_datasource).
SELECT type, count(*) AS count FROM data_source GROUP BY type ORDER BY type;
