-- name: list_data_keys
-- -> every data key, still wrapped by the key derived from [security] secret_key.
SELECT id, active, kek_salt, encrypted_key FROM data_key ORDER BY created;

-- name: insert_data_key
-- $1 id, $2 salt of the wrapping key, $3 wrapped key; becomes the active key.
INSERT INTO data_key (id, active, kek_salt, encrypted_key) VALUES ($1, true, $2, $3);

-- name: rewrap_data_key
-- $1 id, $2 new salt, $3 key wrapped under the new secret_key.
UPDATE data_key SET kek_salt = $2, encrypted_key = $3, updated = now() WHERE id = $1;
