-- name: get_data_source_cache
-- $1 org id, $2 uid -> the data source's cache settings (NULL columns when none are stored) and the
-- org's cache generation.
SELECT c.enabled, c.use_default_ttl, c.ttl_queries_ms, c.ttl_resources_ms, c.created, c.updated,
       coalesce((SELECT generation FROM cache_generation WHERE org_id = $1), 0) AS generation
FROM (SELECT 1) AS one
LEFT JOIN data_source_cache c ON c.org_id = $1 AND c.uid = $2;

-- name: get_data_source_caches
-- $1 org id, $2 uids -> per uid, its cache settings (NULL columns when none are stored) and the org's cache
-- generation: get_data_source_cache for every data source of a request in one round trip.
SELECT u.uid, c.enabled, c.use_default_ttl, c.ttl_queries_ms, c.ttl_resources_ms, c.created, c.updated,
       coalesce((SELECT generation FROM cache_generation WHERE org_id = $1), 0) AS generation
FROM unnest($2::text[]) AS u(uid)
LEFT JOIN data_source_cache c ON c.org_id = $1 AND c.uid = u.uid;

-- name: upsert_data_source_cache
-- $1 org id, $2 uid, $3 enabled, $4 use default TTL, $5 TTL of queries (ms), $6 TTL of resources (ms)
-- -> the stored row.
INSERT INTO data_source_cache (org_id, uid, enabled, use_default_ttl, ttl_queries_ms, ttl_resources_ms)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (org_id, uid) DO UPDATE
SET enabled = $3, use_default_ttl = $4, ttl_queries_ms = $5, ttl_resources_ms = $6, updated = now()
RETURNING enabled, use_default_ttl, ttl_queries_ms, ttl_resources_ms, created, updated;

-- name: bump_cache_generation
-- $1 org id -> the org's new cache generation (every cached value of the org stops matching).
INSERT INTO cache_generation (org_id, generation) VALUES ($1, 1)
ON CONFLICT (org_id) DO UPDATE SET generation = cache_generation.generation + 1
RETURNING generation;
