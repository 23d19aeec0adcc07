-- name: list_orgs
-- -> every org, by id.
SELECT id, name FROM org ORDER BY id;

-- name: org_exists
-- $1 org id -> a row when the org exists.
SELECT 1 FROM org WHERE id = $1;

-- name: insert_org
-- $1 name -> the new org id.
INSERT INTO org (name) VALUES ($1) RETURNING id;

-- name: insert_service_account
-- $1 org id, $2 name, $3 login, $4 role, $5 disabled -> the new row.
INSERT INTO service_account (org_id, name, login, role, is_disabled) VALUES ($1, $2, $3, $4, $5)
RETURNING id, org_id, name, login, role, is_disabled, created, updated;

-- name: get_service_account
-- $1 org id, $2 id -> the row or nothing.
SELECT id, org_id, name, login, role, is_disabled, created, updated
FROM service_account WHERE org_id = $1 AND id = $2;

-- name: insert_service_account_permission
-- $1 service account id, $2 action, $3 scope.
INSERT INTO service_account_permission (service_account_id, action, scope) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING;

-- name: insert_api_token
-- $1 org id, $2 service account id, $3 name, $4 sha256 hex of the token, $5 expiry (NULL: never).
INSERT INTO api_token (org_id, service_account_id, name, hash, expires) VALUES ($1, $2, $3, $4, $5)
RETURNING id, name;

-- name: list_api_tokens
-- $1 org id, $2 service account id -> its tokens.
SELECT t.id, t.name, a.role, t.created, t.expires, t.last_used_at, t.is_revoked
FROM api_token t JOIN service_account a ON a.id = t.service_account_id
WHERE t.org_id = $1 AND t.service_account_id = $2 ORDER BY t.id;

-- name: delete_api_token
-- $1 org id, $2 service account id, $3 token id -> the hash of the deleted token.
DELETE FROM api_token WHERE org_id = $1 AND service_account_id = $2 AND id = $3 RETURNING hash;

-- name: get_token_identity
-- $1 token hash -> the token's service account, its grants as parallel arrays, expiry and state.
SELECT a.id, a.org_id, a.login, a.role, a.is_disabled, t.expires, t.is_revoked,
       coalesce(array_agg(p.action) FILTER (WHERE p.action IS NOT NULL), '{}') AS actions,
       coalesce(array_agg(p.scope) FILTER (WHERE p.action IS NOT NULL), '{}') AS scopes
FROM api_token t
JOIN service_account a ON a.id = t.service_account_id
LEFT JOIN service_account_permission p ON p.service_account_id = a.id
WHERE t.hash = $1
GROUP BY a.id, t.id;
