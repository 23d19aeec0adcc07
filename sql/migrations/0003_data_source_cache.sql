-- Per data source cache settings (Grafana Enterprise's query and resource caching API), and a per-org
-- generation that every cache key carries: `cache/clean` bumps it, so every replica stops reading old
-- entries at once (they expire on their own).
CREATE TABLE data_source_cache (
    org_id bigint NOT NULL,
    uid text NOT NULL,
    enabled boolean NOT NULL,
    use_default_ttl boolean NOT NULL DEFAULT true,
    ttl_queries_ms bigint NOT NULL DEFAULT 0,
    ttl_resources_ms bigint NOT NULL DEFAULT 0,
    created timestamptz NOT NULL DEFAULT now(),
    updated timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, uid),
    -- settings go with their data source
    FOREIGN KEY (org_id, uid) REFERENCES data_source (org_id, uid) ON DELETE CASCADE
);

CREATE TABLE cache_generation (
    org_id bigint PRIMARY KEY REFERENCES org (id) ON DELETE CASCADE,
    generation bigint NOT NULL
);
